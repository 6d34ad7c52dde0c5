//! One direction's end of stream: the source's FIN, and whether it was passed on to the sink
//! (the rules are in [`super::Link`]).

/// One direction of a relay, from its source to its sink: the source's FIN and whether it was
/// passed on.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fin {
    read: bool,
    passed: bool,
}

impl Fin {
    /// The source's FIN was read: nothing more comes from it.
    pub fn read(&mut self) {
        self.read = true;
    }

    /// Whether the source's FIN was read (do not read it again).
    pub fn is_read(&self) -> bool {
        self.read
    }

    /// Whether to shut down the sink's write side now, with `in_transit` telling whether
    /// bytes of this direction are still on their way to the sink. True once.
    pub fn pass_now(&mut self, in_transit: bool) -> bool {
        if self.read && !self.passed && !in_transit {
            self.passed = true;
            return true;
        }
        false
    }

    /// Whether the FIN was passed on.
    pub fn is_passed(&self) -> bool {
        self.passed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fin_waits_for_the_bytes_before_it_and_is_passed_once() {
        let mut fin = Fin::default();
        assert!(!fin.pass_now(false), "no FIN read yet");
        fin.read();
        assert!(
            !fin.pass_now(true),
            "bytes before it are still on their way"
        );
        assert!(fin.pass_now(false));
        assert!(!fin.pass_now(false), "passed once");
        assert!(fin.is_passed());
    }
}
