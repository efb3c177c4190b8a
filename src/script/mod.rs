//! Binary formats of command and data scripts.
