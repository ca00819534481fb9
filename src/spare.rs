//! Working buffers kept per thread between calls, so that a training loop's backward calls
//! allocate nothing after a thread's first: the parameter-gradient totals and block sums, and
//! the kernels' working rows. A call takes a buffer of its element type from the thread's
//! store ([`Spare::with_len`]) and it goes back there when dropped.

use num_traits::Zero;
use std::any::Any;
use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

/// Buffers kept per thread, at most this many: a serial backward call holds five at once (two
/// totals, two block sums, the kernel's working row) and a half-precision one eight (its
/// kernel's two f64 group totals and f32 working row, and the unused working row of the half
/// type)...
const SPARE_BUFFERS: usize = 8;

/// ...of at most this many bytes each: enough for a parallel call's per-group sums at the
/// usual shapes, where allocating and zeroing them took a large part of the call (measured:
/// 512×1024 f32 on 4–16 threads); a larger call amortizes its allocation.
const SPARE_BYTES: usize = 4 << 20;

thread_local! {
    /// Buffers of any element type, kept between calls on this thread. A call takes its
    /// buffers out and puts them back when it returns, so a call made while another one waits
    /// on this thread (rayon work stealing) takes others, or fresh ones.
    static SPARE: RefCell<Vec<Box<dyn Any>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer taken from the calling thread's store (or new), given back when dropped. Boxed as
/// the store keeps it (`Box<dyn Any>`), so that giving it back allocates nothing.
#[allow(clippy::box_collection)] // the box is the store's; unboxing it would allocate per call
pub(crate) struct Spare<S: 'static>(Option<Box<Vec<S>>>);

impl<S: 'static> Spare<S> {
    /// The kept buffer of this type that best fits `len` values (the smallest that holds
    /// them, else the largest), as it was left; or a new one.
    #[allow(clippy::box_collection)] // as kept, see `Spare`
    fn take(len: usize) -> Box<Vec<S>> {
        let kept = SPARE.with(|spare| {
            let mut spare = spare.borrow_mut();
            let fit = |capacity: usize| (capacity < len, capacity.abs_diff(len));
            let index = (spare.iter().enumerate())
                .filter_map(|(i, buffer)| Some((i, buffer.downcast_ref::<Vec<S>>()?.capacity())))
                .min_by_key(|&(_, capacity)| fit(capacity))?
                .0;
            spare.swap_remove(index).downcast::<Vec<S>>().ok()
        });
        kept.unwrap_or_default()
    }

    /// An empty buffer for code that resizes it, best fitting `len` values.
    pub(crate) fn empty(len: usize) -> Self {
        let mut buffer = Self::take(len);
        buffer.clear();
        Spare(Some(buffer))
    }

    /// The buffer itself, for code that resizes it.
    pub(crate) fn vec_mut(&mut self) -> &mut Vec<S> {
        self.0.as_mut().expect("a buffer until dropped")
    }
}

impl<S: Copy + Zero + 'static> Spare<S> {
    /// A buffer of `len` values that are unspecified (whatever an earlier call left; zeros
    /// past the kept buffer's length).
    pub(crate) fn with_len(len: usize) -> Self {
        let mut buffer = Self::take(len);
        buffer.resize(len, S::zero());
        Spare(Some(buffer))
    }

    /// A buffer of `len` zeros.
    #[cfg(any(feature = "half", test))]
    pub(crate) fn zeroed(len: usize) -> Self {
        let mut buffer = Self::with_len(len);
        buffer.fill(S::zero());
        buffer
    }
}

impl<S> Deref for Spare<S> {
    type Target = [S];

    fn deref(&self) -> &[S] {
        self.0.as_ref().expect("a buffer until dropped")
    }
}

impl<S> DerefMut for Spare<S> {
    fn deref_mut(&mut self) -> &mut [S] {
        self.vec_mut()
    }
}

impl<S: 'static> Drop for Spare<S> {
    /// Keeps the buffer for this thread's later calls (an empty one too: its box is kept),
    /// unless it is large or enough are kept.
    fn drop(&mut self) {
        let Some(buffer) = self.0.take() else {
            return;
        };
        if buffer.capacity() * size_of::<S>() > SPARE_BYTES {
            return;
        }
        // `try_with`: a buffer dropped while the thread's store is being destroyed is freed.
        let _ = SPARE.try_with(|spare| {
            let mut spare = spare.borrow_mut();
            if spare.len() < SPARE_BUFFERS {
                spare.push(buffer);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::Spare;

    #[test]
    fn a_dropped_buffer_is_taken_again_by_the_next_call_on_the_thread() {
        let first = Spare::<f64>::zeroed(100);
        let address = first.as_ptr();
        assert!(first.iter().all(|&value| value == 0.0));
        drop(first);
        let mut second = Spare::<f64>::with_len(50);
        assert_eq!(second.as_ptr(), address, "the kept buffer is reused");
        assert_eq!(second.len(), 50);
        second.fill(7.0);
        drop(second);
        // `zeroed` clears what the last user left; another element type gets its own buffer.
        let third = Spare::<f64>::zeroed(80);
        assert_eq!(third.as_ptr(), address);
        assert!(third.iter().all(|&value| value == 0.0));
        let other = Spare::<f32>::with_len(10);
        assert_ne!(other.as_ptr().cast::<u8>(), address.cast::<u8>());
    }

    #[test]
    fn buffers_held_at_once_are_distinct() {
        let a = Spare::<f32>::zeroed(16);
        let b = Spare::<f32>::zeroed(16);
        assert_ne!(a.as_ptr(), b.as_ptr());
    }
}
