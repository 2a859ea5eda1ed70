# eploop build helper. `make demo` builds and runs the echo demo; `make test` runs every test;
# `make install` installs the C library (PREFIX=/usr/local and DESTDIR= honoured).
ROOT     := $(abspath .)
# The crate version is the single source of the version.
VERSION  := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
MAJOR    := $(firstword $(subst ., ,$(VERSION)))
PREFIX   ?= /usr/local
LIBDIR_I  = $(DESTDIR)$(PREFIX)/lib
INCDIR_I  = $(DESTDIR)$(PREFIX)/include
PCDIR_I   = $(LIBDIR_I)/pkgconfig
# What a program linking libeploop.a also needs (rustc --print native-static-libs).
STATIC_LIBS := -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc
LIBDIR   := $(ROOT)/target/release
CC       ?= gcc
CFLAGS   ?= -O2 -g
EXFLAGS  := -std=c11 -Wall -Wextra -Werror -D_GNU_SOURCE -I$(ROOT)/include
EXLIBS   := -L$(LIBDIR) -leploop -Wl,-rpath,$(LIBDIR)
EXAMPLES := $(patsubst c-examples/%.c,c-examples/build/%,$(wildcard c-examples/*.c))
VENV     := $(ROOT)/target/venv
PY       := $(VENV)/bin/python

.PHONY: all lib examples demo test test-rust test-python venv clean install uninstall soak
all: lib examples

# The soname is libeploop.so.MAJOR: programs linked in the tree need that name beside the library.
lib:
	cargo build --release
	ln -sf libeploop.so $(LIBDIR)/libeploop.so.$(MAJOR)

examples: lib $(EXAMPLES)

c-examples/build/%: c-examples/%.c c-examples/eventlog.h include/eploop.h | lib
	@mkdir -p c-examples/build
	$(CC) $(CFLAGS) $(EXFLAGS) -o $@ $< $(EXLIBS)

demo: examples venv
	$(PY) c-examples/demo.py

venv: $(VENV)/.ready
$(VENV)/.ready:
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q pytest hypothesis psutil
	touch $@

test: examples venv test-rust test-python

test-rust: lib
	cargo test --release

test-python: examples venv
	$(PY) -m pip install -q ./python-bindings
	$(PY) -m pytest -q tests python-bindings/tests

# The long reliability tier: churn with random resets and injected faults, 10k connections,
# fd exhaustion (about 5 minutes); prints its figures.
soak: examples
	python3 tests/reliability/soak.py

clean:
	cargo clean
	rm -rf c-examples/build

# Installs libeploop.so.X.Y.Z with its soname link (libeploop.so.X) and dev link (libeploop.so),
# libeploop.a, eploop.h and eploop.pc; writes the list of installed files to
# $(PREFIX)/share/eploop/install-manifest.txt, which `make uninstall` removes.
install: lib
	install -d $(LIBDIR_I) $(INCDIR_I) $(PCDIR_I) $(DESTDIR)$(PREFIX)/share/eploop
	install -m 755 -s target/release/libeploop.so $(LIBDIR_I)/libeploop.so.$(VERSION)
	ln -sf libeploop.so.$(VERSION) $(LIBDIR_I)/libeploop.so.$(MAJOR)
	ln -sf libeploop.so.$(MAJOR) $(LIBDIR_I)/libeploop.so
	install -m 644 target/release/libeploop.a $(LIBDIR_I)/libeploop.a
	strip --strip-debug $(LIBDIR_I)/libeploop.a
	install -m 644 include/eploop.h $(INCDIR_I)/eploop.h
	printf '%s\n' 'prefix=$(PREFIX)' 'libdir=$${prefix}/lib' 'includedir=$${prefix}/include' '' \
	  'Name: eploop' 'Description: Linux epoll as a callback event loop with one normalized on_close' \
	  'Version: $(VERSION)' 'Libs: -L$${libdir} -leploop' 'Libs.private: $(STATIC_LIBS)' \
	  'Cflags: -I$${includedir}' > $(PCDIR_I)/eploop.pc
	printf '%s\n' lib/libeploop.so.$(VERSION) lib/libeploop.so.$(MAJOR) lib/libeploop.so lib/libeploop.a \
	  include/eploop.h lib/pkgconfig/eploop.pc share/eploop/install-manifest.txt \
	  | sed 's|^|$(PREFIX)/|' > $(DESTDIR)$(PREFIX)/share/eploop/install-manifest.txt

uninstall:
	@test -f $(DESTDIR)$(PREFIX)/share/eploop/install-manifest.txt || { echo "no eploop install under $(DESTDIR)$(PREFIX)"; exit 1; }
	sed 's|^|$(DESTDIR)|' $(DESTDIR)$(PREFIX)/share/eploop/install-manifest.txt | xargs rm -f
	rmdir $(DESTDIR)$(PREFIX)/share/eploop 2>/dev/null || true
