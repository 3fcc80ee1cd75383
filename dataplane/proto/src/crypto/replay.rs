//! Anti-replay window with 64-bit extended sequence numbers (RFC 4303 §3.4.3
//! and Appendix A).
//!
//! Only the low 32 bits of the sequence number travel in the ESP header; the
//! receiver infers the high 32 bits from where its window is (Appendix A2.2)
//! and the ICV, computed over the full 64-bit number, confirms the guess. The
//! window is a 2048-bit ring bitmap indexed by `seq % 2048`: bit set = that
//! sequence number was accepted. Checking happens in two steps because the
//! window must only move for packets that authenticated:
//!
//! 1. [`ReplayWindow::check`] before decryption: infer the 64-bit number,
//!    reject duplicates and numbers left of the window;
//! 2. [`ReplayWindow::accept`] after the ICV verified: record it, sliding the
//!    window forward if it is the new highest.
//!
//! One deliberate refinement of Appendix A2.2: its guess for a low half
//! left of the window is "the next 2^32 subspace", i.e. a jump of almost
//! 2^32 packets ahead, which then fails the ICV. We take the nearer reading
//! instead: a guess more than 2^31 ahead of the window is read as old. A
//! replay of an ancient packet is then dropped as [`ReplayError::TooOld`]
//! before any decryption, and a real packet would need more than 2^31
//! consecutive losses to be misread.
//!
//! Not implemented: the Appendix A3 resynchronisation after more than 2^32
//! consecutive lost packets. Sessions rekey long before a single SA sends
//! 2^32 packets into a void, so that state cannot arise.

/// Window size in packets (RFC 4303 asks for at least 32, issue 3 for 1024).
pub const WINDOW: u64 = 2048;
/// Largest forward jump read as "ahead" rather than "old" (see module docs).
const MAX_JUMP: u64 = 1 << 31;
const WORDS: usize = (WINDOW / 64) as usize;

/// Why a sequence number was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplayError {
    /// Already accepted once.
    Duplicate,
    /// Left of the window (or would need a high half below zero).
    TooOld,
}

/// The receive-side window of one inbound SA.
#[derive(Clone)]
pub struct ReplayWindow {
    /// Highest accepted sequence number; 0 = none yet (ESP numbers start at 1).
    top: u64,
    bitmap: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("top", &self.top)
            .finish()
    }
}

impl ReplayWindow {
    /// An empty window: every sequence number from 1 on is acceptable.
    pub const fn new() -> Self {
        ReplayWindow {
            top: 0,
            bitmap: [0; WORDS],
        }
    }

    /// Highest sequence number accepted so far (0 = none).
    pub fn top(&self) -> u64 {
        self.top
    }

    /// Infers the full 64-bit sequence number from its low half (RFC 4303
    /// Appendix A2.2) and rejects it if it is a duplicate or too old.
    pub fn check(&self, seq_low: u32) -> Result<u64, ReplayError> {
        let seq = self.infer(seq_low).ok_or(ReplayError::TooOld)?;
        if seq == 0 {
            return Err(ReplayError::TooOld);
        }
        self.check_full(seq)?;
        Ok(seq)
    }

    /// Records `seq` as received; call only after the packet authenticated.
    ///
    /// Re-checks, so two copies of one packet that both passed [`check`]
    /// (e.g. processed in one batch) cannot both be accepted.
    ///
    /// [`check`]: ReplayWindow::check
    pub fn accept(&mut self, seq: u64) -> Result<(), ReplayError> {
        if seq == 0 {
            return Err(ReplayError::TooOld);
        }
        self.check_full(seq)?;
        if seq > self.top {
            let advance = seq - self.top;
            if advance >= WINDOW {
                self.bitmap = [0; WORDS];
            } else {
                // Clear the bits of the numbers we skipped over (they are now
                // "not yet received" in the new window position). Whole words
                // at a time where possible: this loop runs once per packet.
                let mut s = self.top + 1;
                while s < seq {
                    let bit = s % WINDOW;
                    if bit % 64 == 0 && seq - s >= 64 {
                        self.bitmap[(bit / 64) as usize] = 0;
                        s += 64;
                    } else {
                        self.bitmap[(bit / 64) as usize] &= !(1u64 << (bit % 64));
                        s += 1;
                    }
                }
            }
            self.top = seq;
        }
        let bit = seq % WINDOW;
        self.bitmap[(bit / 64) as usize] |= 1u64 << (bit % 64);
        Ok(())
    }

    fn check_full(&self, seq: u64) -> Result<(), ReplayError> {
        if seq > self.top {
            return Ok(());
        }
        if self.top - seq >= WINDOW {
            return Err(ReplayError::TooOld);
        }
        let bit = seq % WINDOW;
        if self.bitmap[(bit / 64) as usize] & (1u64 << (bit % 64)) != 0 {
            Err(ReplayError::Duplicate)
        } else {
            Ok(())
        }
    }

    /// RFC 4303 Appendix A2.2. `None` when the guess would put the high half
    /// below zero (only possible before 2^32 packets, i.e. a replay of an
    /// ancient number or garbage).
    fn infer(&self, seq_low: u32) -> Option<u64> {
        let tl = self.top as u32;
        let th = (self.top >> 32) as u32;
        let w = WINDOW as u32;
        let bottom = tl.wrapping_sub(w - 1);
        let high = if tl >= w - 1 {
            // Window lies within one 2^32 subspace: a low half at or above the
            // window's bottom is in it (or ahead); below it means we wrapped.
            if seq_low >= bottom {
                th
            } else {
                th.checked_add(1)?
            }
        } else {
            // Window straddles two subspaces: low halves at or above the
            // (wrapped) bottom belong to the previous subspace.
            if seq_low >= bottom {
                th.checked_sub(1)?
            } else {
                th
            }
        };
        let seq = (u64::from(high) << 32) | u64::from(seq_low);
        if seq > self.top && seq - self.top > MAX_JUMP {
            return None;
        }
        Some(seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(w: &mut ReplayWindow, seq_low: u32) -> Result<u64, ReplayError> {
        let seq = w.check(seq_low)?;
        w.accept(seq)?;
        Ok(seq)
    }

    #[test]
    fn in_order() {
        let mut w = ReplayWindow::new();
        for s in 1..=5000u32 {
            assert_eq!(recv(&mut w, s), Ok(u64::from(s)));
        }
        assert_eq!(w.top(), 5000);
    }

    #[test]
    fn zero_is_never_valid() {
        let w = ReplayWindow::new();
        assert_eq!(w.check(0), Err(ReplayError::TooOld));
        let mut w = ReplayWindow::new();
        assert_eq!(w.accept(0), Err(ReplayError::TooOld));
    }

    #[test]
    fn duplicates_rejected() {
        let mut w = ReplayWindow::new();
        recv(&mut w, 1).unwrap();
        recv(&mut w, 2).unwrap();
        assert_eq!(w.check(2), Err(ReplayError::Duplicate));
        assert_eq!(w.check(1), Err(ReplayError::Duplicate));
        // Two copies passing check before either is accepted: second accept fails.
        let a = w.check(3).unwrap();
        let b = w.check(3).unwrap();
        w.accept(a).unwrap();
        assert_eq!(w.accept(b), Err(ReplayError::Duplicate));
    }

    #[test]
    fn reordered_within_window() {
        let mut w = ReplayWindow::new();
        recv(&mut w, 3000).unwrap();
        // Everything in (3000 - 2048, 3000) is still acceptable once.
        for s in (953..3000u32).rev().step_by(7) {
            assert_eq!(recv(&mut w, s), Ok(u64::from(s)), "seq {s}");
            assert_eq!(w.check(s), Err(ReplayError::Duplicate));
        }
        assert_eq!(w.check(952), Err(ReplayError::TooOld));
        assert_eq!(w.check(1), Err(ReplayError::TooOld));
        assert_eq!(w.top(), 3000);
    }

    #[test]
    fn too_old() {
        let mut w = ReplayWindow::new();
        recv(&mut w, 10_000).unwrap();
        assert_eq!(w.check(10_000 - 2048), Err(ReplayError::TooOld));
        assert!(w.check(10_000 - 2047).is_ok());
        assert_eq!(w.accept(10_000 - 5000), Err(ReplayError::TooOld));
    }

    #[test]
    fn window_slide_clears_stale_bits() {
        let mut w = ReplayWindow::new();
        // Accept 1..=100, then jump exactly one window: the bits of 1..=100
        // share slots with 2049..=2148 and must read as "not received".
        for s in 1..=100 {
            recv(&mut w, s).unwrap();
        }
        recv(&mut w, 2200).unwrap();
        for s in 2049..=2148u32 {
            assert_eq!(w.check(s), Ok(u64::from(s)), "seq {s}");
        }
        // A jump of less than a window, crossing word boundaries unaligned.
        let mut w = ReplayWindow::new();
        for s in 1..=2048u32 {
            recv(&mut w, s).unwrap();
        }
        recv(&mut w, 2048 + 1000).unwrap();
        for s in 2049..2048 + 1000u32 {
            assert!(w.check(s).is_ok(), "seq {s} skipped over must be fresh");
        }
        for s in 1049..=2048u32 {
            assert_eq!(w.check(s), Err(ReplayError::Duplicate), "seq {s}");
        }
    }

    #[test]
    fn big_jumps() {
        let mut w = ReplayWindow::new();
        recv(&mut w, 5).unwrap();
        recv(&mut w, 1_000_000).unwrap();
        assert_eq!(w.check(5), Err(ReplayError::TooOld));
        let far = 1_000_000 + (1u64 << 31) - 1;
        assert_eq!(recv(&mut w, far as u32), Ok(far));
        assert_eq!(w.top(), far);
        assert_eq!(w.check(1_000_000), Err(ReplayError::TooOld));
        // More than 2^31 ahead reads as old (nearest interpretation).
        let mut w = ReplayWindow::new();
        recv(&mut w, 10).unwrap();
        assert_eq!(w.check(10 + (1u32 << 31) + 1), Err(ReplayError::TooOld));
        // The same low half after the wrap is ahead again.
        let mut w = ReplayWindow::new();
        w.accept((1u64 << 32) + 100).unwrap();
        assert_eq!(w.check(50), Ok((1u64 << 32) + 50));
        assert_eq!(w.check(u32::MAX - 10), Ok((1u64 << 32) - 11));
    }

    #[test]
    fn wrap_of_low_32_bits() {
        let mut w = ReplayWindow::new();
        let start = (1u64 << 32) - 1000;
        // Pretend we have been running for a while.
        w.accept(start).unwrap();
        for s in start + 1..start + 3000 {
            assert_eq!(recv(&mut w, s as u32), Ok(s), "seq {s:#x}");
        }
        assert_eq!(w.top() >> 32, 1);
        // Late packets from just before the wrap still map to high half 0.
        let late = (1u64 << 32) - 5;
        assert_eq!(w.check(late as u32), Err(ReplayError::Duplicate));
        // Reordered around the wrap: top at 2^32 + 10, a packet from 2^32 - 20
        // not yet received.
        let mut w = ReplayWindow::new();
        w.accept((1u64 << 32) - 30).unwrap();
        w.accept((1u64 << 32) + 10).unwrap();
        assert_eq!(w.check(((1u64 << 32) - 20) as u32), Ok((1u64 << 32) - 20));
        assert_eq!(w.check(20), Ok((1u64 << 32) + 20));
        assert_eq!(
            w.check(((1u64 << 32) - 30) as u32),
            Err(ReplayError::Duplicate)
        );
    }

    #[test]
    fn early_window_low_halves_near_max_are_too_old() {
        // With top small, a low half near 2^32 would need high half -1.
        let mut w = ReplayWindow::new();
        recv(&mut w, 10).unwrap();
        assert_eq!(w.check(u32::MAX - 3), Err(ReplayError::TooOld));
    }
}
