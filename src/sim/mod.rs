//! Simulated CPU and M1 cards.
