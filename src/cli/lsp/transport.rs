//! LSP base protocol over a byte stream: `Content-Length` framed JSON-RPC messages.
//!
//! Bounded and forgiving: a header line is at most [`MAX_HEADER_LINE`] bytes, a header
//! block at most [`MAX_HEADER_LINES`] lines, a body at most [`MAX_MESSAGE`] bytes. A
//! frame that breaks a rule, or whose body is not a JSON-RPC message, is reported as
//! [`Incoming::Malformed`] (the server answers it with an error or ignores it) and
//! reading goes on with the next frame; nothing a client sends ends the server but the
//! end of the stream.

use lsp_server::{Message, RequestId};
use std::io::{self, BufRead, Read, Write};

/// Largest message body read (bytes); a larger one is skipped unread.
pub const MAX_MESSAGE: u64 = 64 << 20;
/// Longest header line (bytes).
pub const MAX_HEADER_LINE: usize = 8 << 10;
/// Most header lines in one frame.
pub const MAX_HEADER_LINES: usize = 32;

/// One frame read from the client.
#[derive(Debug)]
pub enum Incoming {
    /// A well-formed JSON-RPC message.
    Message(Message),
    /// A frame that is not one: why, and the request id when the body had one.
    Malformed(String, Option<RequestId>),
    /// The stream ended.
    Eof,
}

/// Reads one line (up to and including `\n`), at most `max` bytes kept; the rest of an
/// overlong line is skipped. `None` at the end of the stream.
fn read_line(r: &mut dyn BufRead, max: usize) -> io::Result<Option<(Vec<u8>, bool)>> {
    let mut line = Vec::new();
    let mut overlong = false;
    loop {
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(if line.is_empty() && !overlong {
                None
            } else {
                Some((line, overlong))
            });
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        let room = max.saturating_sub(line.len());
        if take > room {
            overlong = true;
        }
        line.extend_from_slice(&buf[..take.min(room)]);
        r.consume(take);
        if done {
            return Ok(Some((line, overlong)));
        }
    }
}

/// Reads the next frame.
pub fn read(r: &mut dyn BufRead) -> io::Result<Incoming> {
    let mut length: Option<Result<u64, String>> = None;
    let mut lines = 0usize;
    let mut problem: Option<String> = None;
    loop {
        let Some((line, overlong)) = read_line(r, MAX_HEADER_LINE)? else {
            return Ok(Incoming::Eof);
        };
        lines += 1;
        if overlong {
            problem.get_or_insert_with(|| {
                format!("a header line longer than {MAX_HEADER_LINE} bytes")
            });
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        if text.is_empty() {
            if lines == 1 {
                // A stray blank line between frames.
                lines = 0;
                continue;
            }
            break;
        }
        if lines > MAX_HEADER_LINES {
            // Garbage without blank lines: give up on this frame, keep reading.
            return Ok(Incoming::Malformed(
                format!("more than {MAX_HEADER_LINES} header lines"),
                None,
            ));
        }
        match text.split_once(':') {
            Some((name, value)) if name.trim().eq_ignore_ascii_case("content-length") => {
                length = Some(
                    value
                        .trim()
                        .parse::<u64>()
                        .map_err(|_| format!("Content-Length `{}` is not a number", value.trim())),
                );
            }
            Some(_) => {} // Content-Type and any other header.
            None => {
                problem.get_or_insert_with(|| format!("`{text}` is not a header"));
            }
        }
    }
    let n = match length {
        None => {
            return Ok(Incoming::Malformed(
                problem.unwrap_or_else(|| String::from("a frame without Content-Length")),
                None,
            ));
        }
        Some(Err(why)) => return Ok(Incoming::Malformed(why, None)),
        Some(Ok(n)) => n,
    };
    if n > MAX_MESSAGE {
        io::copy(&mut r.take(n), &mut io::sink())?;
        return Ok(Incoming::Malformed(
            format!("a message of {n} bytes (the limit is {MAX_MESSAGE})"),
            None,
        ));
    }
    let mut body = Vec::new();
    r.take(n).read_to_end(&mut body)?;
    if (body.len() as u64) < n {
        return Ok(Incoming::Eof);
    }
    if let Some(p) = problem {
        return Ok(Incoming::Malformed(p, None));
    }
    Ok(parse(&body))
}

/// Parses a message body.
pub fn parse(body: &[u8]) -> Incoming {
    let value: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return Incoming::Malformed(format!("not JSON: {e}"), None),
    };
    let id = value
        .get("id")
        .and_then(|id| serde_json::from_value::<RequestId>(id.clone()).ok());
    let has_id = value.get("id").is_some();
    match serde_json::from_value::<Message>(value) {
        // A request whose id is neither a number nor a string reads as a notification.
        Ok(Message::Notification(_)) if has_id => Incoming::Malformed(
            String::from("an id that is neither a number nor a string"),
            None,
        ),
        Ok(m) => Incoming::Message(m),
        Err(e) => Incoming::Malformed(format!("not a JSON-RPC message: {e}"), id),
    }
}

/// Writes a message.
pub fn write(w: &mut dyn Write, msg: &Message) -> io::Result<()> {
    let mut out = io::BufWriter::new(w);
    msg.write(&mut out)?;
    out.flush()
}

/// Writes an error response with a `null` id (for a frame whose id is unknown).
pub fn write_null_id_error(w: &mut dyn Write, code: i32, message: &str) -> io::Result<()> {
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": { "code": code, "message": message },
    })
    .to_string();
    write!(w, "Content-Length: {}\r\n\r\n{body}", body.len())?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[u8]) -> Vec<String> {
        let mut r = io::BufReader::new(input);
        let mut out = Vec::new();
        loop {
            match read(&mut r).expect("in-memory reads do not fail") {
                Incoming::Eof => return out,
                Incoming::Message(m) => out.push(format!("msg {m:?}")),
                Incoming::Malformed(why, id) => out.push(format!("bad {why} {id:?}")),
            }
        }
    }

    fn frame(body: &str) -> String {
        format!("Content-Length: {}\r\n\r\n{body}", body.len())
    }

    #[test]
    fn malformed_frames_are_reported_and_reading_goes_on() {
        let ok = r#"{"jsonrpc":"2.0","method":"initialized","params":{}}"#;
        let mut input = String::new();
        input += &frame("{not json");
        input += &frame(r#"{"jsonrpc":"2.0","id":7,"method":5}"#);
        input += &frame(r#"{"jsonrpc":"2.0","id":{"a":1},"method":"x"}"#);
        input += "Content-Length: x\r\n\r\n";
        input += "garbage line\r\n\r\n";
        input += &frame(ok);
        input += "Content-Length: 99999999999\r\n\r\nshort";
        let mut got = frames(input.as_bytes());
        assert_eq!(got.len(), 7, "{got:#?}");
        assert!(got[0].starts_with("bad not JSON"), "{}", got[0]);
        assert!(got[1].contains("Some(RequestId(I32(7)))"), "{}", got[1]);
        assert!(
            got[2].contains("neither a number nor a string"),
            "{}",
            got[2]
        );
        got.remove(2);
        assert!(got[2].contains("not a number"), "{}", got[2]);
        assert!(got[3].contains("not a header"), "{}", got[3]);
        assert!(got[4].starts_with("msg "), "{}", got[4]);
        assert!(got[5].contains("the limit"), "{}", got[5]);
    }

    #[test]
    fn a_truncated_body_is_the_end() {
        assert!(frames(b"Content-Length: 10\r\n\r\n{}").is_empty());
        let mut long = vec![b'a'; MAX_HEADER_LINE * 3];
        assert!(frames(&long).is_empty());
        long.extend_from_slice(b"\r\n\r\n");
        let got = frames(&long);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].contains("longer than"), "{}", got[0]);
    }
}
