//! Transaction receipts, signed by the reader.
