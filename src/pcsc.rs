//! PC/SC backend for real readers.
