//! Chunking a `Read` with any read sizes, giving the cut points of the whole buffer.

use std::io::{self, Read};

use crate::Chunker;

/// Chunks of a stream. Holds at most about two maximum-size chunks in memory.
pub struct StreamChunks<R> {
    chunker: Chunker,
    reader: R,
    buf: Vec<u8>,
    start: usize,
    eof: bool,
}

impl<R: Read> StreamChunks<R> {
    pub(crate) fn new(chunker: Chunker, reader: R) -> Self {
        let cap = chunker.params().max as usize * 2;
        StreamChunks {
            chunker,
            reader,
            buf: Vec::with_capacity(cap),
            start: 0,
            eof: false,
        }
    }

    /// Fills the window until it holds `max` bytes or the input has ended.
    fn fill(&mut self) -> io::Result<()> {
        let want = self.chunker.params().max as usize;
        while !self.eof && self.buf.len() - self.start < want {
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            let old = self.buf.len();
            let target = want.max(old + 64 * 1024).min(want * 2);
            self.buf.resize(target, 0);
            match self.reader.read(&mut self.buf[old..]) {
                Ok(0) => {
                    self.buf.truncate(old);
                    self.eof = true;
                }
                Ok(n) => self.buf.truncate(old + n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => self.buf.truncate(old),
                Err(e) => {
                    self.buf.truncate(old);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// The next chunk, or `None` at the end of the input.
    pub fn next_chunk(&mut self) -> io::Result<Option<&[u8]>> {
        self.fill()?;
        let window = &self.buf[self.start..];
        if window.is_empty() {
            return Ok(None);
        }
        let len = self.chunker.next_cut(window);
        let chunk = &self.buf[self.start..self.start + len];
        self.start += len;
        Ok(Some(chunk))
    }
}
