//! Host side of the control channel (protocol in `scalebox_init::proto`): connect to the VM's
//! socket (QEMU's virtio-serial socket, or a guest vsock port through Firecracker's hybrid vsock
//! socket, see [`crate::vsock`]), attach, send the run configuration and signals, receive guest
//! messages.

use std::path::Path;
use std::time::Duration;

use scalebox_init::proto::{self, GuestMsg, HostMsg, RunConfig};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use crate::VmmError;

pub struct Channel {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

/// The receiving half of a split [`Channel`].
pub struct ChannelReader(Channel);

/// The sending half of a split [`Channel`].
pub struct ChannelWriter(OwnedWriteHalf);

impl ChannelWriter {
    pub async fn send(&mut self, m: &HostMsg) -> Result<(), VmmError> {
        self.0
            .write_all(&proto::encode(m))
            .await
            .map_err(|e| VmmError::Channel(format!("write: {e}")))
    }
    pub async fn signal(&mut self, signal: i32) -> Result<(), VmmError> {
        self.send(&HostMsg::Signal { signal }).await
    }
}

impl ChannelReader {
    pub async fn next(&mut self) -> Result<Option<GuestMsg>, VmmError> {
        self.0.next().await
    }
}

impl Channel {
    /// A channel over an already connected stream; sends `attach`.
    pub async fn from_stream(s: UnixStream) -> Result<Channel, VmmError> {
        let (r, w) = s.into_split();
        let mut c = Channel {
            reader: BufReader::new(r),
            writer: w,
        };
        c.send(&HostMsg::Attach).await?;
        Ok(c)
    }

    /// Connects to the guest's control port ([`crate::vsock::CONTROL_PORT`]) through the
    /// hybrid vsock socket `uds` (Firecracker), retrying until `timeout` while the guest boots.
    pub async fn connect_vsock(uds: &Path, timeout: Duration) -> Result<Channel, VmmError> {
        let s = crate::vsock::connect(uds, crate::vsock::CONTROL_PORT, timeout).await?;
        Self::from_stream(s).await
    }

    /// Connects to the VM's control socket, retrying until `timeout` while QEMU creates it.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Channel, VmmError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match UnixStream::connect(path).await {
                Ok(s) => return Self::from_stream(s).await,
                Err(e) if tokio::time::Instant::now() > deadline => {
                    return Err(VmmError::Channel(format!(
                        "connect {}: {e}",
                        path.display()
                    )));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Waits for the guest's `hello` (re-sending `attach` every 2 s in case one was lost while
    /// the guest was still booting). Returns (state, pid, exit) from the hello.
    pub async fn wait_hello(&mut self, timeout: Duration) -> Result<GuestMsg, VmmError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let slice = tokio::time::Instant::now() + Duration::from_secs(2);
            match tokio::time::timeout_at(slice.min(deadline), self.next()).await {
                Ok(Ok(Some(m @ GuestMsg::Hello { .. }))) => return Ok(m),
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) => {
                    return Err(VmmError::Channel(
                        "the guest closed the channel before saying hello".into(),
                    ));
                }
                Ok(Err(e)) => return Err(e),
                Err(_) if tokio::time::Instant::now() >= deadline => {
                    return Err(VmmError::Channel(format!(
                        "no hello from the guest within {timeout:?}"
                    )));
                }
                Err(_) => self.send(&HostMsg::Attach).await?,
            }
        }
    }

    /// Splits into a reader and a writer (so a task can read while another sends signals).
    /// The reader half keeps a duplicate of the write side only to satisfy the type; sends go
    /// through the returned writer.
    pub fn split(self) -> Result<(ChannelReader, ChannelWriter), VmmError> {
        let Channel { reader, writer } = self;
        let stream = reader
            .into_inner()
            .reunite(writer)
            .map_err(|e| VmmError::Channel(format!("split: {e}")))?;
        let std = stream
            .into_std()
            .map_err(|e| VmmError::Channel(format!("split: {e}")))?;
        let dup = std
            .try_clone()
            .map_err(|e| VmmError::Channel(format!("split: {e}")))?;
        let (r, w) = UnixStream::from_std(std)
            .map_err(|e| VmmError::Channel(format!("split: {e}")))?
            .into_split();
        let (_, w2) = UnixStream::from_std(dup)
            .map_err(|e| VmmError::Channel(format!("split: {e}")))?
            .into_split();
        Ok((
            ChannelReader(Channel {
                reader: BufReader::new(r),
                writer: w,
            }),
            ChannelWriter(w2),
        ))
    }

    pub async fn send(&mut self, m: &HostMsg) -> Result<(), VmmError> {
        self.writer
            .write_all(&proto::encode(m))
            .await
            .map_err(|e| VmmError::Channel(format!("write: {e}")))
    }

    pub async fn run(&mut self, config: RunConfig) -> Result<(), VmmError> {
        self.send(&HostMsg::Run {
            config: Box::new(config),
        })
        .await
    }

    pub async fn signal(&mut self, signal: i32) -> Result<(), VmmError> {
        self.send(&HostMsg::Signal { signal }).await
    }

    /// The next guest message; `None` when the VM closed the channel (powered off).
    pub async fn next(&mut self) -> Result<Option<GuestMsg>, VmmError> {
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = (&mut self.reader)
                .take(proto::MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut line)
                .await
                .map_err(|e| VmmError::Channel(format!("read: {e}")))?;
            if n == 0 {
                return Ok(None);
            }
            if line.len() > proto::MAX_LINE {
                return Err(VmmError::Channel("guest sent an over-long message".into()));
            }
            match proto::decode::<GuestMsg>(line.trim_ascii_end()) {
                Ok(Some(m)) => return Ok(Some(m)),
                Ok(None) => continue,
                Err(e) => return Err(VmmError::Channel(e)),
            }
        }
    }
}

use tokio::io::AsyncReadExt as _;
