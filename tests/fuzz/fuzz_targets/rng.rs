//! The targets' random numbers: xorshift64, seeded from the control block,
//! so that every input replays the same choices.

/// The next number of the sequence (`state` must not be 0).
pub fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}
