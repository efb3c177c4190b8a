//! The reader's offline store-and-forward journal of signed receipts.
