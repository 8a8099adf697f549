//! Chunking a `Read` with any read sizes, giving the cut points of the whole buffer.

use std::io::{self, Read};

use crate::Chunker;

/// Chunks of a stream. Holds one window of two maximum-size chunks, zeroed once: each read
/// lands in it directly, so no byte is written twice.
pub struct StreamChunks<R> {
    chunker: Chunker,
    reader: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
}

impl<R: Read> StreamChunks<R> {
    pub(crate) fn new(chunker: Chunker, reader: R) -> Self {
        let cap = chunker.params().max as usize * 2;
        StreamChunks {
            chunker,
            reader,
            buf: vec![0; cap],
            start: 0,
            end: 0,
            eof: false,
        }
    }

    /// Fills the window until it holds `max` bytes or the input has ended.
    fn fill(&mut self) -> io::Result<()> {
        let want = self.chunker.params().max as usize;
        while !self.eof && self.end - self.start < want {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            // Reads of at least 64 KiB, never past the window.
            let target = want.max(self.end + 64 * 1024).min(self.buf.len());
            match self.reader.read(&mut self.buf[self.end..target]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The next chunk, or `None` at the end of the input.
    pub fn next_chunk(&mut self) -> io::Result<Option<&[u8]>> {
        self.fill()?;
        let window = &self.buf[self.start..self.end];
        if window.is_empty() {
            return Ok(None);
        }
        let len = self.chunker.next_cut(window);
        let chunk = &self.buf[self.start..self.start + len];
        self.start += len;
        Ok(Some(chunk))
    }
}
