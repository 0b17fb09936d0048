//! The file a snapshot is sent from and received into, as openraft reads and writes it
//! (`TypeConfig::SnapshotData`): tokio's file in production, whose reads, writes and seeks go
//! to tokio's blocking pool; in a simulation (`pkraft_types::world::runs_blocking_work_inline`)
//! std's, each read, write and seek done at once on the thread that polls, as the rest of the
//! node's storage work is there. A job on the blocking pool finishes in real time, at whatever
//! moment of simulated time that comes, so a run with a snapshot sent would not replay from its
//! seed.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

/// A snapshot's file, open for openraft.
#[derive(Debug)]
pub enum SnapshotData {
    /// Production: tokio's file (its work on the blocking pool).
    Pooled(tokio::fs::File),
    /// A simulation: std's file, each operation done as it is polled. `seeked` holds a seek's
    /// outcome from `start_seek` until `poll_complete` takes it.
    Inline {
        file: std::fs::File,
        seeked: Option<io::Result<u64>>,
    },
}

impl SnapshotData {
    /// `file` as snapshot data: inline in a simulation, on tokio's pool otherwise.
    pub fn from_std(file: std::fs::File) -> SnapshotData {
        if pkraft_types::world::runs_blocking_work_inline() {
            SnapshotData::Inline { file, seeked: None }
        } else {
            SnapshotData::Pooled(tokio::fs::File::from_std(file))
        }
    }

    /// The std file back, once any operation under way on the pool has finished.
    pub async fn into_std(self) -> std::fs::File {
        match self {
            SnapshotData::Pooled(file) => file.into_std().await,
            SnapshotData::Inline { file, .. } => file,
        }
    }
}

impl AsyncRead for SnapshotData {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SnapshotData::Pooled(file) => Pin::new(file).poll_read(cx, buf),
            SnapshotData::Inline { file, .. } => {
                let read = file.read(buf.initialize_unfilled())?;
                buf.advance(read);
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl AsyncWrite for SnapshotData {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            SnapshotData::Pooled(file) => Pin::new(file).poll_write(cx, buf),
            SnapshotData::Inline { file, .. } => Poll::Ready(file.write(buf)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SnapshotData::Pooled(file) => Pin::new(file).poll_flush(cx),
            SnapshotData::Inline { file, .. } => Poll::Ready(file.flush()),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SnapshotData::Pooled(file) => Pin::new(file).poll_shutdown(cx),
            SnapshotData::Inline { file, .. } => Poll::Ready(file.flush()),
        }
    }
}

impl AsyncSeek for SnapshotData {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        match self.get_mut() {
            SnapshotData::Pooled(file) => Pin::new(file).start_seek(position),
            SnapshotData::Inline { file, seeked } => {
                *seeked = Some(file.seek(position));
                Ok(())
            }
        }
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        match self.get_mut() {
            SnapshotData::Pooled(file) => Pin::new(file).poll_complete(cx),
            // No seek under way: where the file stands (tokio's answers its last seek's
            // position; the trait leaves it open, and `seek` asks before every seek).
            SnapshotData::Inline { file, seeked } => {
                Poll::Ready(seeked.take().unwrap_or_else(|| file.stream_position()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

    use super::*;

    /// Both kinds write, seek and read back alike (the pooled one in this process, which
    /// simulates nothing; the inline one built directly).
    #[tokio::test]
    async fn both_kinds_write_seek_and_read_alike() {
        let dir = tempfile::tempdir().expect("a temp dir");
        for (name, inline) in [("pooled", false), ("inline", true)] {
            let path = dir.path().join(name);
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&path)
                .expect("a file");
            let mut data = if inline {
                SnapshotData::Inline { file, seeked: None }
            } else {
                SnapshotData::from_std(file)
            };
            assert_eq!(matches!(data, SnapshotData::Inline { .. }), inline);
            data.write_all(b"snapshot bytes").await.expect("written");
            data.flush().await.expect("flushed");
            assert_eq!(data.stream_position().await.expect("a position"), 14);
            assert_eq!(data.seek(SeekFrom::Start(9)).await.expect("seeked"), 9);
            let mut tail = String::new();
            data.read_to_string(&mut tail).await.expect("read");
            assert_eq!(tail, "bytes", "{name}");
            let mut file = data.into_std().await;
            file.seek(SeekFrom::Start(0)).expect("seeked");
            let mut all = String::new();
            file.read_to_string(&mut all).expect("read");
            assert_eq!(all, "snapshot bytes", "{name}");
        }
    }
}
