//! xorshift64*: a tiny deterministic pseudo-random generator, the one copy
//! shared by the link thread (reconnect jitter), the property tests and the
//! test harness (which imports it from the library). Not for anything secret.

/// The state; it must never be zero (`new` makes sure).
#[derive(Clone, Debug)]
pub struct XorShift(pub u64);

impl XorShift {
    pub fn new(seed: u64) -> XorShift {
        XorShift(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}
