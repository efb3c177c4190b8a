//! p
pub struct CardProfile;
pub struct SimCard;
