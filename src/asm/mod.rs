//! The `.casm` assembler and disassembler, and the TOML data-script compiler.
