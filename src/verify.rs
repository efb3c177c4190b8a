//! The bytecode verifier.
