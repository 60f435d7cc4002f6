//! Modules arriving over a `SignModules` stream as start, data and end parts, put back together:
//! a state machine with no I/O, so every order of parts can be tested.

use kforge_proto::signer::v1 as pb;
use tonic::Status;

/// A module being received.
struct Incoming {
    start: pb::ModuleStart,
    bytes: Vec<u8>,
    refused: Option<Status>,
}

/// What a part means for the stream.
#[derive(Debug)]
pub(crate) enum Step {
    /// Nothing to do yet.
    More,
    /// A module is complete: sign it.
    Module { start: pb::ModuleStart, bytes: Vec<u8> },
    /// This module fails (the stream goes on).
    Refused { id: String, status: Status },
    /// The stream is broken: report and stop.
    Broken(Status),
}

/// Reassembles modules, refusing any over `max` bytes without keeping their data.
pub(crate) struct Assembler {
    max: u64,
    current: Option<Incoming>,
}

impl Assembler {
    pub fn new(max: u64) -> Self {
        Assembler { max, current: None }
    }

    /// Takes one part; a start before the previous module ended refuses the previous one and
    /// starts the new one (both are reported, in that order, by the two calls it takes).
    pub fn push(&mut self, part: pb::sign_modules_request::Part) -> Step {
        use pb::sign_modules_request::Part;
        let max = self.max;
        match part {
            Part::Start(start) => {
                let unfinished = self.current.take();
                let refused = (start.size > max)
                    .then(|| Status::resource_exhausted(format!("module {:?} is {} bytes, over this signer's limit of {max}", start.id, start.size)));
                // Room for the module and its signature, so signing appends without copying.
                let capacity = if refused.is_none() { start.size as usize + 8192 } else { 0 };
                self.current = Some(Incoming { start, bytes: Vec::with_capacity(capacity), refused });
                match unfinished {
                    Some(prev) => Step::Refused {
                        status: Status::invalid_argument(format!("module {:?} was not ended before the next one started", prev.start.id)),
                        id: prev.start.id,
                    },
                    None => Step::More,
                }
            }
            Part::Data(data) => {
                let Some(m) = self.current.as_mut() else { return Step::Broken(Status::invalid_argument("module data before ModuleStart")) };
                if m.refused.is_none() {
                    if m.bytes.len() as u64 + data.len() as u64 > max {
                        m.refused = Some(Status::resource_exhausted(format!("module {:?} exceeds this signer's limit of {max} bytes", m.start.id)));
                        m.bytes = Vec::new();
                    } else {
                        m.bytes.extend_from_slice(&data);
                    }
                }
                Step::More
            }
            Part::End(_) => match self.current.take() {
                None => Step::Broken(Status::invalid_argument("ModuleEnd without ModuleStart")),
                Some(Incoming { start, refused: Some(status), .. }) => Step::Refused { id: start.id, status },
                Some(Incoming { start, bytes, refused: None }) => Step::Module { start, bytes },
            },
        }
    }

    /// The stream ended: a module still open is refused.
    pub fn finish(self) -> Option<(String, Status)> {
        self.current.map(|m| {
            let status = Status::invalid_argument(format!("the stream ended in the middle of module {:?}", m.start.id));
            (m.start.id, status)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::sign_modules_request::Part;

    fn start(id: &str, size: u64) -> Part {
        Part::Start(pb::ModuleStart { id: id.into(), size, ..Default::default() })
    }

    fn data(bytes: &[u8]) -> Part {
        Part::Data(bytes.to_vec().into())
    }

    fn end(id: &str) -> Part {
        Part::End(pb::ModuleEnd { id: id.into() })
    }

    #[test]
    fn modules_come_back_whole_in_order() {
        let mut a = Assembler::new(100);
        assert!(matches!(a.push(start("a", 4)), Step::More));
        assert!(matches!(a.push(data(b"ab")), Step::More));
        assert!(matches!(a.push(data(b"cd")), Step::More));
        match a.push(end("a")) {
            Step::Module { start, bytes } => assert_eq!((start.id.as_str(), bytes.as_slice()), ("a", &b"abcd"[..])),
            other => panic!("{other:?}"),
        }
        assert!(a.finish().is_none());
    }

    #[test]
    fn oversized_modules_are_refused_without_ending_the_stream() {
        let mut a = Assembler::new(4);
        a.push(start("big", 5));
        assert!(matches!(a.push(end("big")), Step::Refused { ref id, ref status } if id == "big" && status.code() == tonic::Code::ResourceExhausted));
        // Declared small, sent large.
        a.push(start("liar", 1));
        a.push(data(b"abc"));
        a.push(data(b"de"));
        assert!(matches!(a.push(end("liar")), Step::Refused { ref status, .. } if status.message().contains("exceeds")));
        a.push(start("ok", 2));
        a.push(data(b"ok"));
        assert!(matches!(a.push(end("ok")), Step::Module { .. }), "the stream goes on");
    }

    #[test]
    fn parts_out_of_order_are_reported() {
        assert!(matches!(Assembler::new(9).push(data(b"x")), Step::Broken(_)));
        assert!(matches!(Assembler::new(9).push(end("x")), Step::Broken(_)));
        let mut a = Assembler::new(9);
        a.push(start("first", 1));
        assert!(matches!(a.push(start("second", 1)), Step::Refused { ref id, .. } if id == "first"));
        a.push(data(b"2"));
        assert!(matches!(a.push(end("second")), Step::Module { ref start, .. } if start.id == "second"));
        a.push(start("open", 1));
        let (id, status) = a.finish().expect("an open module");
        assert!(id == "open" && status.message().contains("middle"), "{status:?}");
    }
}
