//! Sealing and opening scripts for one reader (SM2 + SM4 + SM3).
