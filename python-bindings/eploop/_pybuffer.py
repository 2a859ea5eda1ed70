"""CPython's buffer protocol through ctypes (``PyObject_GetBuffer``/``PyBuffer_Release``): how
the binding hands the library a pointer into a bytes-like object without copying it (a send
from a read-only buffer, ``send_many``, ``send_nocopy``). Not the library's API: that is
``_ffi``."""

from __future__ import annotations

import ctypes


class PyBuffer(ctypes.Structure):
    """CPython's ``Py_buffer`` (stable ABI since 3.11): a pointer into an object's buffer, held
    until ``release_buffer``. Used to send from a buffer without copying it."""

    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


PyBUF_SIMPLE = 0
get_buffer = ctypes.pythonapi.PyObject_GetBuffer
get_buffer.argtypes = (ctypes.py_object, ctypes.POINTER(PyBuffer), ctypes.c_int)
get_buffer.restype = ctypes.c_int
release_buffer = ctypes.pythonapi.PyBuffer_Release
release_buffer.argtypes = (ctypes.POINTER(PyBuffer),)
release_buffer.restype = None
