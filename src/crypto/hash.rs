//! SM3 hashing (GB/T 32905), one-shot and incremental.

use sm3::Digest;

/// SM3 digest of `data` (GB/T 32905).
pub fn sm3(data: &[u8]) -> [u8; 32] {
    sm3::Sm3::digest(data).into()
}

/// Incremental SM3: [`Sm3Hasher::new`], any number of [`Sm3Hasher::update`], then
/// [`Sm3Hasher::finalize`].
#[derive(Clone, Default)]
pub struct Sm3Hasher {
    inner: sm3::Sm3,
}

impl Sm3Hasher {
    /// A hasher with no input yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed more input.
    pub fn update(&mut self, data: &[u8]) {
        Digest::update(&mut self.inner, data);
    }

    /// The digest of everything fed so far.
    pub fn finalize(self) -> [u8; 32] {
        Digest::finalize(self.inner).into()
    }
}

impl core::fmt::Debug for Sm3Hasher {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Sm3Hasher").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::block::tests::h;
    use proptest::prelude::*;

    #[test]
    fn sm3_abc() {
        let want = h("66C7F0F462EEEDD9D1F2D46BDC10E4E24167C4875CF2F7A2297DA02B8F4BA8E0");
        assert_eq!(sm3(b"abc").to_vec(), want);
        let mut s = Sm3Hasher::new();
        s.update(b"a");
        s.update(b"");
        s.update(b"bc");
        assert_eq!(s.finalize().to_vec(), want);
    }

    #[test]
    fn sm3_abcd_x16() {
        let want = h("DEBE9FF92275B8A138604889C18E5A4D6FDB70E5387E5765293DCBA39C0C5732");
        let msg = b"abcd".repeat(16);
        assert_eq!(sm3(&msg).to_vec(), want);
        let mut s = Sm3Hasher::new();
        for _ in 0..16 {
            s.update(b"abcd");
        }
        assert_eq!(s.finalize().to_vec(), want);
    }

    proptest! {
        #[test]
        fn incremental_equals_one_shot(data in proptest::collection::vec(any::<u8>(), 0..200), cut in any::<usize>()) {
            let cut = if data.is_empty() { 0 } else { cut % data.len() };
            let mut s = Sm3Hasher::new();
            s.update(&data[..cut]);
            s.update(&data[cut..]);
            prop_assert_eq!(s.finalize(), sm3(&data));
        }
    }
}
