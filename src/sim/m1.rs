//! M1
pub struct M1Card; pub struct AccessBits;
