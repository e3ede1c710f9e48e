//! The framing of interactive exec sessions (`sb exec -t`), spoken after an HTTP upgrade to
//! [`PROTOCOL`] between the CLI, the control plane (which relays bytes untouched) and the host
//! agent. Each frame is `[kind: u8][length: u32 big-endian][payload]`; the client's first frame
//! is `start`. Pure: no I/O.

use serde::{Deserialize, Serialize};

/// The `Upgrade:` token.
pub const PROTOCOL: &str = "scalebox-exec";

/// Largest accepted payload.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// What a tty session starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Start {
    pub argv: Vec<String>,
    pub rows: u16,
    pub cols: u16,
}

/// How the command ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    #[serde(default)]
    pub code: Option<i32>,
    #[serde(default)]
    pub signal: Option<i32>,
    /// Why it could not run.
    #[serde(default)]
    pub error: Option<String>,
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// client → agent, first: what to run (JSON).
    Start(Start),
    /// client → agent: terminal input.
    Stdin(Vec<u8>),
    /// client → agent: new window size.
    Resize { rows: u16, cols: u16 },
    /// agent → client: terminal output.
    Output(Vec<u8>),
    /// agent → client, last: how it ended (JSON).
    Exit(Exit),
}

const START: u8 = 1;
const STDIN: u8 = 2;
const RESIZE: u8 = 3;
const OUTPUT: u8 = 16;
const EXIT: u8 = 17;

/// Encodes one frame.
pub fn encode(f: &Frame) -> Vec<u8> {
    let (kind, payload) = match f {
        Frame::Start(s) => (START, serde_json::to_vec(s).expect("serializes")),
        Frame::Stdin(d) => (STDIN, d.clone()),
        Frame::Resize { rows, cols } => {
            let mut p = rows.to_be_bytes().to_vec();
            p.extend_from_slice(&cols.to_be_bytes());
            (RESIZE, p)
        }
        Frame::Output(d) => (OUTPUT, d.clone()),
        Frame::Exit(e) => (EXIT, serde_json::to_vec(e).expect("serializes")),
    };
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Accumulates bytes and yields complete frames.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame; `Ok(None)` when more bytes are needed; an error for a frame
    /// that is not valid (the session should end).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, String> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let kind = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_PAYLOAD {
            return Err(format!("frame of {len} bytes is larger than {MAX_PAYLOAD}"));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        let payload: Vec<u8> = self.buf.drain(..5 + len).skip(5).collect();
        let json_err = |e: serde_json::Error| format!("invalid frame payload: {e}");
        Ok(Some(match kind {
            START => Frame::Start(serde_json::from_slice(&payload).map_err(json_err)?),
            STDIN => Frame::Stdin(payload),
            RESIZE if payload.len() == 4 => Frame::Resize {
                rows: u16::from_be_bytes([payload[0], payload[1]]),
                cols: u16::from_be_bytes([payload[2], payload[3]]),
            },
            OUTPUT => Frame::Output(payload),
            EXIT => Frame::Exit(serde_json::from_slice(&payload).map_err(json_err)?),
            k => return Err(format!("unknown frame kind {k} (length {len})")),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_in_any_chunking() {
        let frames = vec![
            Frame::Start(Start {
                argv: vec!["sh".into()],
                rows: 24,
                cols: 80,
            }),
            Frame::Stdin(b"echo hi\n".to_vec()),
            Frame::Resize {
                rows: 40,
                cols: 100,
            },
            Frame::Output(vec![0, 255, 10]),
            Frame::Exit(Exit {
                code: Some(3),
                ..Exit::default()
            }),
        ];
        let bytes: Vec<u8> = frames.iter().flat_map(encode).collect();
        for chunk in [1, 2, 7, bytes.len()] {
            let mut d = Decoder::default();
            let mut got = Vec::new();
            for c in bytes.chunks(chunk) {
                d.push(c);
                while let Some(f) = d.next_frame().unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got, frames, "chunk size {chunk}");
        }
    }

    #[test]
    fn bad_frames_are_errors() {
        let mut d = Decoder::default();
        d.push(&[99, 0, 0, 0, 0]);
        assert!(
            d.next_frame()
                .unwrap_err()
                .contains("unknown frame kind 99")
        );
        let mut d = Decoder::default();
        d.push(&[2, 0xff, 0xff, 0xff, 0xff]);
        assert!(d.next_frame().unwrap_err().contains("larger"));
        let mut d = Decoder::default();
        d.push(&[1, 0, 0, 0, 2, b'{', b'x']);
        assert!(
            d.next_frame()
                .unwrap_err()
                .contains("invalid frame payload")
        );
    }
}
