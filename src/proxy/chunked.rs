//! Where a chunked body ends (RFC 9112 section 7.1), read as it streams by: the relay of a
//! forwarded request's answer passes the body up to its last chunk and trailers, and no
//! further. No I/O, no buffering: a few bytes of state.

/// How far a chunked body has been read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In the hex digits of a chunk size.
    Size,
    /// In a chunk extension, up to the line's CR.
    Extension,
    /// After a size line's CR.
    SizeLineFeed,
    /// In a chunk's data.
    Data,
    /// After a chunk's data: its CR.
    DataReturn,
    /// After a chunk's data: its LF.
    DataLineFeed,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// In a trailer line, up to its CR.
    Trailer,
    /// After a trailer line's CR.
    TrailerLineFeed,
    /// After the final empty line's CR.
    FinalLineFeed,
    /// The body is over.
    Done,
}

/// The most a size line's extensions or the trailers may take: more is a malformed body.
const MAX_LINE_BYTES: u32 = 16 * 1024;

/// A chunked body that does not follow the grammar: the relay stops where it broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// The reader of one chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkedEnd {
    state: State,
    /// The chunk size being read, then the data left in the chunk.
    size: u64,
    /// Digits of the size read (at least one is required).
    digits: u8,
    /// Bytes of extensions or trailers read (bounded).
    line_bytes: u32,
}

impl Default for ChunkedEnd {
    fn default() -> Self {
        ChunkedEnd {
            state: State::Size,
            size: 0,
            digits: 0,
            line_bytes: 0,
        }
    }
}

impl ChunkedEnd {
    /// Reads `bytes`, the body's next ones: `Ok(Some(n))` when the body ends after the
    /// first `n` of them, `Ok(None)` when all of them belong to it and more are to come.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, Malformed> {
        let mut at = 0;
        while at < bytes.len() {
            if self.state == State::Done {
                return Ok(Some(at));
            }
            if self.state == State::Data {
                let take = self.size.min((bytes.len() - at) as u64);
                self.size -= take;
                at += take as usize;
                if self.size == 0 {
                    self.state = State::DataReturn;
                }
                continue;
            }
            self.step(bytes[at])?;
            at += 1;
        }
        Ok((self.state == State::Done).then_some(at))
    }

    /// Whether the body is over.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    fn step(&mut self, byte: u8) -> Result<(), Malformed> {
        self.state = match (self.state, byte) {
            (State::Size, b'\r') if self.digits > 0 => State::SizeLineFeed,
            (State::Size, b';' | b' ' | b'\t') if self.digits > 0 => State::Extension,
            (State::Size, digit) => {
                let value = (digit as char).to_digit(16).ok_or(Malformed)?;
                // Sixteen hex digits fit in 64 bits; more is no length anyone sends.
                if self.digits >= 16 {
                    return Err(Malformed);
                }
                self.digits += 1;
                self.size = self.size << 4 | u64::from(value);
                State::Size
            }
            (State::Extension, b'\r') => State::SizeLineFeed,
            (State::Extension, b'\n') => return Err(Malformed),
            (State::Extension, _) => {
                self.count_line_byte()?;
                State::Extension
            }
            (State::SizeLineFeed, b'\n') if self.size == 0 => State::TrailerStart,
            (State::SizeLineFeed, b'\n') => State::Data,
            (State::DataReturn, b'\r') => State::DataLineFeed,
            (State::DataLineFeed, b'\n') => {
                self.digits = 0;
                State::Size
            }
            (State::TrailerStart, b'\r') => State::FinalLineFeed,
            (State::TrailerStart | State::Trailer, b'\n') => return Err(Malformed),
            (State::TrailerStart | State::Trailer, _) => {
                self.count_line_byte()?;
                if byte == b'\r' {
                    State::TrailerLineFeed
                } else {
                    State::Trailer
                }
            }
            (State::TrailerLineFeed, b'\n') => State::TrailerStart,
            (State::FinalLineFeed, b'\n') => State::Done,
            _ => return Err(Malformed),
        };
        Ok(())
    }

    fn count_line_byte(&mut self) -> Result<(), Malformed> {
        self.line_bytes += 1;
        if self.line_bytes > MAX_LINE_BYTES {
            return Err(Malformed);
        }
        Ok(())
    }
}

/// The data of a whole chunked `body` (as [`ChunkedEnd`] found its end), its extensions
/// and trailers dropped; `None` if it is not one.
pub fn decode(body: &[u8]) -> Option<Vec<u8>> {
    let mut data = Vec::new();
    let mut rest = body;
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let line = &rest[..line_end];
        let digits = line
            .iter()
            .position(|b| !b.is_ascii_hexdigit())
            .unwrap_or(line.len());
        let size = u64::from_str_radix(std::str::from_utf8(&line[..digits]).ok()?, 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some(data);
        }
        let size = usize::try_from(size).ok()?;
        data.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size.checked_add(2)?..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end_of(body: &[u8]) -> Result<Option<usize>, Malformed> {
        ChunkedEnd::default().feed(body)
    }

    #[test]
    fn a_body_ends_after_its_last_chunk_and_trailers() {
        let body = b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n";
        assert_eq!(end_of(body), Ok(Some(body.len())));
        let mut after = body.to_vec();
        after.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(end_of(&after), Ok(Some(body.len())), "nothing after it");
        let trailers = b"0\r\nX-Checksum: 1\r\nX-More: 2\r\n\r\n";
        assert_eq!(end_of(trailers), Ok(Some(trailers.len())));
        assert_eq!(end_of(b"000\r\n\r\n"), Ok(Some(7)));
    }

    #[test]
    fn split_anywhere_it_ends_at_the_same_byte() {
        let body = b"4\r\nwiki\r\n5;a=b\r\npedia\r\n0\r\nT: v\r\n\r\n";
        for cut in 0..=body.len() {
            let mut reader = ChunkedEnd::default();
            let first = reader.feed(&body[..cut]).unwrap();
            let total = match first {
                Some(n) => n,
                None => cut + reader.feed(&body[cut..]).unwrap().expect("ends"),
            };
            assert_eq!(total, body.len(), "cut at {cut}");
        }
        let mut reader = ChunkedEnd::default();
        assert_eq!(reader.feed(b"4\r\nwi"), Ok(None));
        assert!(!reader.is_done());
    }

    #[test]
    fn a_whole_body_decodes_to_its_data() {
        let body = b"5\r\nhello\r\n1;x=y\r\n \r\n6\r\nworld!\r\n0\r\nT: v\r\n\r\n";
        assert_eq!(end_of(body), Ok(Some(body.len())));
        assert_eq!(decode(body).as_deref(), Some(&b"hello world!"[..]));
        assert_eq!(decode(b"0\r\n\r\n").as_deref(), Some(&b""[..]));
    }

    #[test]
    fn a_body_that_breaks_the_grammar_is_malformed() {
        for bad in [
            &b"\r\n"[..],
            b"x\r\n",
            b"5\nhello\r\n",
            b"5\r\nhello\n",
            b"5\r\nhelloX",
            b"11111111111111111\r\n",
            b"0\r\nX\n",
            b"-1\r\n",
        ] {
            assert_eq!(
                end_of(bad),
                Err(Malformed),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut long = b"1;".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_LINE_BYTES as usize + 1));
        assert_eq!(end_of(&long), Err(Malformed));
    }
}
