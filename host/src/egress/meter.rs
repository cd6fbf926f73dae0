//! Token metering of OpenAI-compatible responses: finds `"prompt_tokens": N` and
//! `"completion_tokens": N` in a response body as it streams past, in a JSON body or in the
//! events of a `text/event-stream`, with bounded memory (a carry-over of a few dozen bytes
//! between chunks, whatever the body's size).
//!
//! The last value seen of each wins: providers that repeat a running `usage` in every
//! streamed chunk are not counted twice. A key inside a JSON string (`\"prompt_tokens\"`,
//! quoted in model output) does not count.

/// Bytes kept between chunks: a key split across two chunks is still found.
const CARRY: usize = 64;
/// Most bytes of a key, its colon, blanks and digits held back while the number is cut off.
const MAX_PENDING: usize = 128;

const KEYS: [&[u8]; 2] = [b"\"prompt_tokens\"", b"\"completion_tokens\""];

/// Prompt and completion tokens found so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// `prompt_tokens`.
    pub prompt: u64,
    /// `completion_tokens`.
    pub completion: u64,
}

impl Usage {
    /// Both together.
    pub fn total(&self) -> u64 {
        self.prompt.saturating_add(self.completion)
    }
}

/// Scans a body chunk by chunk.
#[derive(Debug, Default)]
pub struct UsageScanner {
    carry: Vec<u8>,
    found: [Option<u64>; 2],
}

enum Parse {
    Value(u64, usize),
    Incomplete,
    NotANumber,
}

fn parse_after(buf: &[u8], mut i: usize) -> Parse {
    while i < buf.len() && buf[i].is_ascii_whitespace() {
        i += 1;
    }
    if i == buf.len() {
        return Parse::Incomplete;
    }
    if buf[i] != b':' {
        return Parse::NotANumber;
    }
    i += 1;
    while i < buf.len() && buf[i].is_ascii_whitespace() {
        i += 1;
    }
    let start = i;
    while i < buf.len() && buf[i].is_ascii_digit() {
        i += 1;
    }
    if i == buf.len() {
        return Parse::Incomplete;
    }
    if i == start || i - start > 19 {
        return Parse::NotANumber;
    }
    let n = std::str::from_utf8(&buf[start..i]).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    Parse::Value(n, i)
}

impl UsageScanner {
    /// A scanner that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Scan the next chunk of the body.
    pub fn feed(&mut self, chunk: &[u8]) {
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(chunk);
        self.scan(buf, false);
    }

    /// The body ended: what was found.
    pub fn finish(mut self) -> Usage {
        let buf = std::mem::take(&mut self.carry);
        // A number cut off by the end of the body counts as it stands.
        let mut buf = buf;
        buf.push(b' ');
        self.scan(buf, true);
        Usage { prompt: self.found[0].unwrap_or(0), completion: self.found[1].unwrap_or(0) }
    }

    /// What was found so far.
    pub fn usage(&self) -> Usage {
        Usage { prompt: self.found[0].unwrap_or(0), completion: self.found[1].unwrap_or(0) }
    }

    fn scan(&mut self, buf: Vec<u8>, last: bool) {
        let mut i = 0;
        let mut pending: Option<usize> = None;
        'outer: while i < buf.len() {
            if buf[i] == b'"' && (i == 0 || buf[i - 1] != b'\\') {
                for (k, key) in KEYS.iter().enumerate() {
                    if buf[i..].starts_with(key) {
                        match parse_after(&buf, i + key.len()) {
                            Parse::Value(n, end) => {
                                self.found[k] = Some(n);
                                i = end;
                                continue 'outer;
                            }
                            Parse::Incomplete if !last => {
                                pending = Some(i);
                                break 'outer;
                            }
                            _ => {}
                        }
                    } else if key.starts_with(&buf[i..]) && !last {
                        // A key cut off by the chunk's end.
                        pending = Some(i);
                        break 'outer;
                    }
                }
            }
            i += 1;
        }
        if last {
            return;
        }
        self.carry = match pending {
            // From the quote before the key (its preceding byte tells an escaped quote).
            Some(p) if buf.len() - p <= MAX_PENDING => buf[p.saturating_sub(1)..].to_vec(),
            _ => buf[buf.len().saturating_sub(CARRY)..].to_vec(),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_split(body: &[u8], at: &[usize]) -> Usage {
        let mut s = UsageScanner::new();
        let mut from = 0;
        for &cut in at {
            s.feed(&body[from..cut]);
            from = cut;
        }
        s.feed(&body[from..]);
        s.finish()
    }

    const JSON: &[u8] = br#"{"id":"x","choices":[{"message":{"content":"say \"prompt_tokens\": 999"}}],"usage":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46,"prompt_tokens_details":{"cached_tokens":3}}}"#;

    #[test]
    fn a_json_body_at_every_split() {
        let want = Usage { prompt: 12, completion: 34 };
        assert_eq!(scan_split(JSON, &[]), want);
        for cut in 1..JSON.len() {
            assert_eq!(scan_split(JSON, &[cut]), want, "cut at {cut}");
        }
        for cut in 1..JSON.len() - 1 {
            assert_eq!(scan_split(JSON, &[cut, cut + 1]), want, "cuts at {cut}");
        }
        // One byte at a time.
        let all: Vec<usize> = (1..JSON.len()).collect();
        assert_eq!(scan_split(JSON, &all), want);
    }

    #[test]
    fn an_event_stream_with_usage_in_the_last_chunk() {
        let mut body = Vec::new();
        for i in 0..200 {
            body.extend_from_slice(
                format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"tok{i}\"}}}}],\"usage\":null}}\n\n")
                    .as_bytes(),
            );
        }
        body.extend_from_slice(
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\": 7, \"completion_tokens\": 200}}\n\ndata: [DONE]\n\n",
        );
        let want = Usage { prompt: 7, completion: 200 };
        for size in [1, 3, 7, 64, 1000] {
            let cuts: Vec<usize> = (size..body.len()).step_by(size).collect();
            assert_eq!(scan_split(&body, &cuts), want, "chunks of {size}");
        }
    }

    #[test]
    fn memory_stays_bounded() {
        let mut s = UsageScanner::new();
        let junk = vec![b'a'; 1 << 16];
        for _ in 0..64 {
            s.feed(&junk);
            assert!(s.carry.len() <= MAX_PENDING + 1);
        }
        s.feed(br#""completion_tokens":   "#);
        s.feed(b"5");
        s.feed(b"6}");
        assert_eq!(s.finish(), Usage { prompt: 0, completion: 56 });
    }

    #[test]
    fn a_number_cut_by_the_end_counts() {
        assert_eq!(scan_split(br#"{"prompt_tokens":4"#, &[10]), Usage { prompt: 4, completion: 0 });
    }
}
