//! MT19937 seeded like `np.random.RandomState(seed)`, with numpy's legacy bounded integers
//! (`randint`: masked rejection on 32-bit draws) and `permutation` (Fisher-Yates from the
//! end, `random_interval`), so that a seed gives numpy's exact sequence.

const N: usize = 624;
const M: usize = 397;

/// `np.random.RandomState(seed)` (legacy seeding, `init_genrand`).
#[derive(Clone)]
pub struct RandomState {
    mt: [u32; N],
    pos: usize,
}

impl RandomState {
    pub fn new(seed: u32) -> Self {
        let mut mt = [0u32; N];
        mt[0] = seed;
        for i in 1..N {
            mt[i] = 1_812_433_253u32
                .wrapping_mul(mt[i - 1] ^ (mt[i - 1] >> 30))
                .wrapping_add(i as u32);
        }
        RandomState { mt, pos: N }
    }

    fn generate(&mut self) {
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        const MATRIX_A: u32 = 0x9908_b0df;
        for i in 0..N {
            let y = (self.mt[i] & UPPER) | (self.mt[(i + 1) % N] & LOWER);
            let mut v = self.mt[(i + M) % N] ^ (y >> 1);
            if y & 1 == 1 {
                v ^= MATRIX_A;
            }
            self.mt[i] = v;
        }
        self.pos = 0;
    }

    /// The next 32-bit output (`genrand_int32`).
    pub fn next_u32(&mut self) -> u32 {
        if self.pos >= N {
            self.generate();
        }
        let mut y = self.mt[self.pos];
        self.pos += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    fn next_u64(&mut self) -> u64 {
        let hi = u64::from(self.next_u32());
        (hi << 32) | u64::from(self.next_u32())
    }

    /// A value in `0..=max` by masked rejection (numpy's `random_interval` and
    /// `buffered_bounded_masked_uint32/64`, which draw the same way for one value).
    fn masked(&mut self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        let mask = u64::MAX >> max.leading_zeros();
        if max <= u64::from(u32::MAX) {
            loop {
                let v = u64::from(self.next_u32()) & mask;
                if v <= max {
                    return v;
                }
            }
        }
        loop {
            let v = self.next_u64() & mask;
            if v <= max {
                return v;
            }
        }
    }

    /// `rng.randint(low, high)` (int64, one value); `None` where numpy raises
    /// (`low >= high`).
    pub fn randint(&mut self, low: i64, high: i64) -> Option<i64> {
        if low >= high {
            return None;
        }
        let range = (high - 1).wrapping_sub(low) as u64;
        if range == u64::from(u32::MAX) {
            // numpy's full-range 32-bit case: one raw draw.
            return Some(low.wrapping_add(i64::from(self.next_u32())));
        }
        Some(low.wrapping_add(self.masked(range) as i64))
    }

    /// `rng.permutation(n)`.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut v: Vec<usize> = (0..n).collect();
        self.shuffle(&mut v);
        v
    }

    /// `rng.shuffle(x)` on a 1-D sequence.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.masked(i as u64) as usize;
            v.swap(i, j);
        }
    }
}
