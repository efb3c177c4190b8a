//! The trusted-tag frame for reader → server messages.
