//! The frames blob: how `video.decode` stores sampled frames in the run store, and what
//! `video.encode` and later stages read back.
//!
//! A small self-describing raw format, written and read as a stream (a long video never sits in
//! memory), little-endian throughout:
//!
//! ```text
//! header (32 bytes): b"MGFRAMES" | u32 version = 1 | u32 width | u32 height | u32 channels (1 gray, 3 rgb)
//!                    | f64 fps (frames per second of the sampling; 0 when not a fixed rate)
//! then per frame:    f64 pts_s (presentation time on the source's timeline) | width*height*channels bytes
//! ```
//!
//! Rows are packed (no padding), top to bottom; RGB is R, G, B per pixel. The frame count is
//! `(file size - 32) / (8 + width*height*channels)`.

use super::{Frame, PixelFormat};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// File magic.
pub const MAGIC: &[u8; 8] = b"MGFRAMES";
/// Format version.
pub const VERSION: u32 = 1;
/// Header size in bytes.
pub const HEADER_LEN: u64 = 32;

/// What a frames blob holds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FramesHeader {
    pub width: u32,
    pub height: u32,
    pub format: PixelFormat,
    /// Sampling rate of the frames; 0 when they are not at a fixed rate.
    pub fps: f64,
}

impl FramesHeader {
    /// Bytes of one frame's pixels.
    pub fn frame_bytes(&self) -> usize {
        self.width as usize * self.height as usize * self.format.channels()
    }
}

/// Writes a frames blob frame by frame.
pub struct FramesWriter {
    out: BufWriter<File>,
    path: PathBuf,
    header: FramesHeader,
    count: u64,
}

impl FramesWriter {
    /// Create `path` and write the header.
    pub fn create(path: &Path, header: FramesHeader) -> std::io::Result<FramesWriter> {
        if header.format == PixelFormat::Yuv {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "frames blobs hold RGB or gray frames; convert YUV frames with Frame::rgb first",
            ));
        }
        let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
        out.write_all(MAGIC)?;
        out.write_all(&VERSION.to_le_bytes())?;
        out.write_all(&header.width.to_le_bytes())?;
        out.write_all(&header.height.to_le_bytes())?;
        out.write_all(&(header.format.channels() as u32).to_le_bytes())?;
        out.write_all(&header.fps.to_le_bytes())?;
        Ok(FramesWriter { out, path: path.to_path_buf(), header, count: 0 })
    }

    /// Append a frame; it must have the blob's size and format.
    pub fn write(&mut self, frame: &Frame) -> std::io::Result<()> {
        if (frame.width, frame.height, frame.format) != (self.header.width, self.header.height, self.header.format) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "frame {}x{} {} does not match the blob's {}x{} {}",
                    frame.width,
                    frame.height,
                    frame.format.as_str(),
                    self.header.width,
                    self.header.height,
                    self.header.format.as_str()
                ),
            ));
        }
        self.out.write_all(&frame.pts_s.to_le_bytes())?;
        self.out.write_all(frame.data())?;
        self.count += 1;
        Ok(())
    }

    /// Flush and sync; returns the number of frames written.
    pub fn finish(self) -> std::io::Result<u64> {
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(self.count)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn count(&self) -> u64 {
        self.count
    }
}

/// Reads a frames blob frame by frame: an iterator of frames.
pub struct FramesReader {
    input: BufReader<File>,
    header: FramesHeader,
    count: u64,
    read: u64,
}

fn invalid(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
}

impl FramesReader {
    /// Open a blob and read its header.
    pub fn open(path: &Path) -> std::io::Result<FramesReader> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let mut input = BufReader::with_capacity(1 << 20, file);
        let mut h = [0u8; HEADER_LEN as usize];
        input.read_exact(&mut h).map_err(|_| invalid(format!("{} is too short for a frames blob", path.display())))?;
        if &h[0..8] != MAGIC {
            return Err(invalid(format!("{} is not a frames blob (bad magic)", path.display())));
        }
        let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let version = u32_at(8);
        if version != VERSION {
            return Err(invalid(format!(
                "{}: frames blob version {version}, this build reads {VERSION}",
                path.display()
            )));
        }
        let (width, height, channels) = (u32_at(12), u32_at(16), u32_at(20));
        let mut f = [0u8; 8];
        f.copy_from_slice(&h[24..32]);
        let fps = f64::from_le_bytes(f);
        let format = match channels {
            1 => PixelFormat::Gray,
            3 => PixelFormat::Rgb,
            c => return Err(invalid(format!("{}: {c} channels per pixel is not supported", path.display()))),
        };
        let header = FramesHeader { width, height, format, fps };
        let per = 8 + header.frame_bytes() as u64;
        if width == 0 || height == 0 || !(len - HEADER_LEN).is_multiple_of(per) {
            return Err(invalid(format!("{} is a truncated frames blob", path.display())));
        }
        Ok(FramesReader { input, header, count: (len - HEADER_LEN) / per, read: 0 })
    }

    pub fn header(&self) -> FramesHeader {
        self.header
    }
    /// Number of frames in the blob.
    pub fn frames(&self) -> u64 {
        self.count
    }
}

impl Iterator for FramesReader {
    type Item = std::io::Result<Frame>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.read >= self.count {
            return None;
        }
        self.read += 1;
        let mut t = [0u8; 8];
        if let Err(e) = self.input.read_exact(&mut t) {
            return Some(Err(e));
        }
        let mut data = vec![0u8; self.header.frame_bytes()];
        if let Err(e) = self.input.read_exact(&mut data) {
            return Some(Err(e));
        }
        let h = self.header;
        Some(Ok(Frame::new(f64::from_le_bytes(t), None, h.width, h.height, h.format, data)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.frames");
        let h = FramesHeader { width: 4, height: 2, format: PixelFormat::Rgb, fps: 30.0 };
        let mut w = FramesWriter::create(&p, h).unwrap();
        for i in 0..3u8 {
            w.write(&Frame::new(i as f64 / 30.0, None, 4, 2, PixelFormat::Rgb, vec![i; 24])).unwrap();
        }
        assert!(w.write(&Frame::new(0.0, None, 2, 2, PixelFormat::Rgb, vec![0; 12])).is_err());
        assert_eq!(w.finish().unwrap(), 3);
        let r = FramesReader::open(&p).unwrap();
        assert_eq!(r.header(), h);
        assert_eq!(r.frames(), 3);
        let frames: Vec<Frame> = r.map(|f| f.unwrap()).collect();
        assert_eq!(frames[2].data(), &[2u8; 24][..]);
        assert!((frames[1].pts_s - 1.0 / 30.0).abs() < 1e-12);
        // truncation is detected
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 1]).unwrap();
        assert!(FramesReader::open(&p).is_err());
    }
}
