//! SVHN's `train_32x32.mat` / `test_32x32.mat`, read with a minimal MATLAB v5 MAT-file
//! parser: a 128-byte header, then data elements (8-byte tags, or 4-byte "small element"
//! tags for ≤ 4 bytes of data), numeric `miMATRIX` arrays, and `miCOMPRESSED` (zlib)
//! elements. Only numeric, real, full arrays are read; anything else is skipped.
//!
//! SVHN stores `X` as uint8 `32 × 32 × 3 × N` and `y` as `N × 1` with labels 1..=10
//! (10 is the digit 0), both column-major.

use std::io::Read;
use std::path::Path;

use rayon::prelude::*;

use super::dataset::{numbered_names, Dataset};
use super::error::{read_file, DataError};
use super::Split;

const MI_INT8: u32 = 1;
const MI_UINT8: u32 = 2;
const MI_INT16: u32 = 3;
const MI_UINT16: u32 = 4;
const MI_INT32: u32 = 5;
const MI_UINT32: u32 = 6;
const MI_SINGLE: u32 = 7;
const MI_DOUBLE: u32 = 9;
const MI_INT64: u32 = 12;
const MI_UINT64: u32 = 13;
const MI_MATRIX: u32 = 14;
const MI_COMPRESSED: u32 = 15;

/// One numeric array read from a MAT-file: its name, dimensions (column-major) and
/// the raw bytes of its real part with their MAT data type.
#[derive(Debug)]
pub(crate) struct MatArray {
    pub name: String,
    pub dims: Vec<usize>,
    data_type: u32,
    data: Vec<u8>,
    big_endian: bool,
}

fn type_size(t: u32) -> Option<usize> {
    Some(match t {
        MI_INT8 | MI_UINT8 => 1,
        MI_INT16 | MI_UINT16 => 2,
        MI_INT32 | MI_UINT32 | MI_SINGLE => 4,
        MI_DOUBLE | MI_INT64 | MI_UINT64 => 8,
        _ => return None,
    })
}

struct Reader<'a> {
    path: &'a Path,
    big_endian: bool,
}

/// A data element: its type and its data bytes.
struct Element<'b> {
    ty: u32,
    data: &'b [u8],
}

impl Reader<'_> {
    fn u32_at(&self, b: &[u8]) -> u32 {
        let a = [b[0], b[1], b[2], b[3]];
        if self.big_endian {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        }
    }

    /// Reads the element at `bytes[*pos..]` and advances `*pos` past it (and its
    /// padding to 8 bytes, except after compressed elements, which are not padded).
    fn element<'b>(&self, bytes: &'b [u8], pos: &mut usize, ctx: &str) -> Result<Element<'b>, DataError> {
        let rest = &bytes[*pos..];
        if rest.len() < 8 {
            return Err(DataError::truncated(
                self.path,
                format!("{ctx}: {} bytes left where an 8-byte element tag should be", rest.len()),
            ));
        }
        let first = self.u32_at(rest);
        if first >> 16 != 0 {
            // small data element: type and size in the first 4 bytes, data in the next 4
            let (ty, n) = (first & 0xffff, (first >> 16) as usize);
            if n > 4 {
                return Err(DataError::format(
                    self.path,
                    format!("{ctx}: small data element claims {n} bytes (at most 4)"),
                ));
            }
            *pos += 8;
            return Ok(Element { ty, data: &rest[4..4 + n] });
        }
        let n = self.u32_at(&rest[4..]) as usize;
        if rest.len() - 8 < n {
            return Err(DataError::truncated(
                self.path,
                format!("{ctx}: element of type {first} claims {n} bytes but only {} are left", rest.len() - 8),
            ));
        }
        let padded = if first == MI_COMPRESSED { n } else { n.div_ceil(8) * 8 };
        *pos = (*pos + 8 + padded).min(bytes.len());
        Ok(Element { ty: first, data: &rest[8..8 + n] })
    }

    /// Walks a sequence of top-level elements, collecting the numeric arrays whose
    /// names are in `wanted`.
    fn walk(&self, bytes: &[u8], wanted: &[&str], out: &mut Vec<MatArray>) -> Result<(), DataError> {
        let mut pos = 0;
        while pos < bytes.len() {
            if bytes[pos..].iter().all(|&b| b == 0) {
                break; // trailing padding
            }
            let el = self.element(bytes, &mut pos, "top level")?;
            match el.ty {
                MI_COMPRESSED => {
                    let mut inner = Vec::new();
                    flate2::read::ZlibDecoder::new(el.data).read_to_end(&mut inner).map_err(|e| {
                        if e.kind() == std::io::ErrorKind::UnexpectedEof {
                            DataError::truncated(self.path, "a compressed element's zlib stream ends early")
                        } else {
                            DataError::format(self.path, format!("corrupt compressed element: {e}"))
                        }
                    })?;
                    self.walk(&inner, wanted, out)?;
                }
                MI_MATRIX => {
                    if let Some(a) = self.matrix(el.data, wanted)? {
                        out.push(a);
                    }
                }
                _ => {} // other top-level data: not ours
            }
        }
        Ok(())
    }

    fn matrix(&self, data: &[u8], wanted: &[&str]) -> Result<Option<MatArray>, DataError> {
        if data.is_empty() {
            return Ok(None); // an empty array
        }
        let mut pos = 0;
        let flags = self.element(data, &mut pos, "array flags")?;
        if flags.ty != MI_UINT32 || flags.data.len() != 8 {
            return Err(DataError::format(
                self.path,
                format!(
                    "array flags have type {} and {} bytes (expected miUINT32, 8 bytes)",
                    flags.ty,
                    flags.data.len()
                ),
            ));
        }
        let f = self.u32_at(flags.data);
        let class = f & 0xff;
        let complex = f & 0x800 != 0;
        // numeric classes: 6 double … 15 uint64
        if !(6..=15).contains(&class) || complex {
            return Ok(None);
        }
        let dims_el = self.element(data, &mut pos, "array dimensions")?;
        if dims_el.ty != MI_INT32 || dims_el.data.len() % 4 != 0 {
            return Err(DataError::format(self.path, "array dimensions are not miINT32"));
        }
        let dims: Vec<usize> = dims_el.data.chunks_exact(4).map(|c| self.u32_at(c) as i32 as usize).collect();
        let name_el = self.element(data, &mut pos, "array name")?;
        let name = String::from_utf8_lossy(name_el.data).into_owned();
        if !wanted.contains(&name.as_str()) {
            return Ok(None);
        }
        let real = self.element(data, &mut pos, &format!("data of variable {name}"))?;
        let size = type_size(real.ty).ok_or_else(|| {
            DataError::format(self.path, format!("variable {name} has unsupported data type {}", real.ty))
        })?;
        let count = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if count.and_then(|c| c.checked_mul(size)) != Some(real.data.len()) {
            return Err(DataError::wrong_size(
                self.path,
                format!("variable {name} has dimensions {dims:?} but {} bytes of {size}-byte values", real.data.len()),
            ));
        }
        Ok(Some(MatArray { name, dims, data_type: real.ty, data: real.data.to_vec(), big_endian: self.big_endian }))
    }
}

impl MatArray {
    pub fn len(&self) -> usize {
        self.dims.iter().product()
    }

    /// Element `i` as f64.
    pub fn get(&self, i: usize) -> f64 {
        let s = type_size(self.data_type).unwrap_or(1);
        let b = &self.data[i * s..(i + 1) * s];
        macro_rules! num {
            ($t:ty) => {{
                let a = b.try_into().unwrap_or_default();
                (if self.big_endian { <$t>::from_be_bytes(a) } else { <$t>::from_le_bytes(a) }) as f64
            }};
        }
        match self.data_type {
            MI_INT8 => b[0] as i8 as f64,
            MI_UINT8 => b[0] as f64,
            MI_INT16 => num!(i16),
            MI_UINT16 => num!(u16),
            MI_INT32 => num!(i32),
            MI_UINT32 => num!(u32),
            MI_SINGLE => num!(f32),
            MI_DOUBLE => num!(f64),
            MI_INT64 => num!(i64),
            _ => num!(u64),
        }
    }

    /// All values as bytes; each must be a whole number in 0..=255.
    pub fn into_u8(self, path: &Path) -> Result<Vec<u8>, DataError> {
        if self.data_type == MI_UINT8 {
            return Ok(self.data);
        }
        (0..self.len())
            .map(|i| {
                let v = self.get(i);
                if v.fract() == 0.0 && (0.0..=255.0).contains(&v) {
                    Ok(v as u8)
                } else {
                    Err(DataError::format(
                        path,
                        format!("variable {} holds {v} at element {i}, not a pixel value 0..=255", self.name),
                    ))
                }
            })
            .collect()
    }
}

/// Reads the numeric arrays named in `wanted` from a MAT v5 file's bytes.
pub(crate) fn read_mat(path: &Path, bytes: &[u8], wanted: &[&str]) -> Result<Vec<MatArray>, DataError> {
    if bytes.len() < 128 {
        return Err(DataError::truncated(
            path,
            format!("{} bytes, shorter than the 128-byte MAT-file header", bytes.len()),
        ));
    }
    if bytes.starts_with(b"MATLAB 7.3") || bytes.get(512..).is_some_and(|b| b.starts_with(b"\x89HDF")) {
        return Err(DataError::format(path, "MAT-file v7.3 (HDF5) is not supported; re-save it with save(..., '-v7')"));
    }
    let big_endian = match &bytes[126..128] {
        b"IM" => false,
        b"MI" => true,
        _ => {
            return Err(DataError::BadMagic {
                path: path.to_path_buf(),
                found: format!("{:?}", String::from_utf8_lossy(&bytes[126..128])),
                expected: "\"IM\" or \"MI\" at byte 126, a MATLAB v5 MAT-file".into(),
            })
        }
    };
    if !bytes.starts_with(b"MATLAB") {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            found: format!("{:?}", String::from_utf8_lossy(&bytes[..6])),
            expected: "\"MATLAB\" text header, a MATLAB v5 MAT-file".into(),
        });
    }
    let r = Reader { path, big_endian };
    let mut out = Vec::new();
    r.walk(&bytes[128..], wanted, &mut out)?;
    Ok(out)
}

/// Loads an SVHN-format `.mat` file (`X`: `h × w × c × N` uint8, `y`: `N` labels
/// 1..=10 with 10 for the digit 0).
pub fn load_svhn_mat(path: &Path) -> Result<Dataset, DataError> {
    let hint = "get train_32x32.mat / test_32x32.mat from http://ufldl.stanford.edu/housenumbers/";
    let bytes = read_file(path, hint)?;
    let arrays = read_mat(path, &bytes, &["X", "y"])?;
    drop(bytes);
    let mut x = None;
    let mut y = None;
    for a in arrays {
        if a.name == "X" {
            x = Some(a);
        } else {
            y = Some(a);
        }
    }
    let x = x.ok_or_else(|| DataError::format(path, "no numeric variable X (the images) in the MAT-file"))?;
    let y = y.ok_or_else(|| DataError::format(path, "no numeric variable y (the labels) in the MAT-file"))?;
    let (h, w, c, n) = match x.dims[..] {
        [h, w, c, n] => (h, w, c, n),
        [h, w, c] => (h, w, c, 1),
        _ => {
            return Err(DataError::wrong_size(
                path,
                format!("X has dimensions {:?}, expected h × w × channels × N", x.dims),
            ))
        }
    };
    if h == 0 || w == 0 || !(c == 1 || c == 3) {
        return Err(DataError::wrong_size(
            path,
            format!("X has dimensions {:?}, expected h × w × (1 or 3) × N", x.dims),
        ));
    }
    if y.len() != n || y.dims.iter().filter(|&&d| d != 1).count() > 1 {
        return Err(DataError::wrong_size(path, format!("y has dimensions {:?} but X holds {n} images", y.dims)));
    }
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let v = y.get(i);
        if v.fract() != 0.0 || !(1.0..=10.0).contains(&v) {
            return Err(DataError::label(path, i, v as i64, "1..=10, with 10 for the digit 0"));
        }
        labels.push(v as u16 % 10);
    }
    let raw = x.into_u8(path)?;
    let len = c * h * w;
    let mut images = vec![0u8; n * len];
    images.par_chunks_mut(len).enumerate().for_each(|(k, out)| {
        let src = &raw[k * len..(k + 1) * len];
        for ch in 0..c {
            let plane = &src[ch * h * w..(ch + 1) * h * w];
            let dst = &mut out[ch * h * w..(ch + 1) * h * w];
            for i in 0..h {
                for j in 0..w {
                    dst[i * w + j] = plane[i + h * j];
                }
            }
        }
    });
    Ok(Dataset { images, labels, n, c, h, w, classes: 10, class_names: numbered_names(10) })
}

/// SVHN from `dir/train_32x32.mat` or `dir/test_32x32.mat`.
pub fn load_svhn(dir: &Path, split: Split) -> Result<Dataset, DataError> {
    let file = match split {
        Split::Train => "train_32x32.mat",
        Split::Test => "test_32x32.mat",
    };
    load_svhn_mat(&dir.join(file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn header() -> Vec<u8> {
        let mut h = b"MATLAB 5.0 MAT-file, written by the hpff tests".to_vec();
        h.resize(116, b' ');
        h.extend_from_slice(&[0; 8]);
        h.extend_from_slice(&0x0100u16.to_le_bytes());
        h.extend_from_slice(b"IM");
        h
    }

    fn el(ty: u32, data: &[u8]) -> Vec<u8> {
        let mut v = ty.to_le_bytes().to_vec();
        v.extend_from_slice(&(data.len() as u32).to_le_bytes());
        v.extend_from_slice(data);
        while !v.len().is_multiple_of(8) {
            v.push(0);
        }
        v
    }

    fn small_el(ty: u32, data: &[u8]) -> Vec<u8> {
        assert!(data.len() <= 4);
        let mut v = ((data.len() as u32) << 16 | ty).to_le_bytes().to_vec();
        v.extend_from_slice(data);
        v.resize(8, 0);
        v
    }

    fn matrix(name: &str, class: u32, dims: &[u32], ty: u32, data: &[u8], small_name: bool) -> Vec<u8> {
        let mut body = el(MI_UINT32, &[class as u8, 0, 0, 0, 0, 0, 0, 0]);
        let d: Vec<u8> = dims.iter().flat_map(|x| (*x as i32).to_le_bytes()).collect();
        body.extend(el(MI_INT32, &d));
        body.extend(if small_name { small_el(MI_INT8, name.as_bytes()) } else { el(MI_INT8, name.as_bytes()) });
        body.extend(el(ty, data));
        el(MI_MATRIX, &body)
    }

    fn compressed(element: &[u8]) -> Vec<u8> {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(element).unwrap();
        let z = z.finish().unwrap();
        let mut v = MI_COMPRESSED.to_le_bytes().to_vec();
        v.extend_from_slice(&(z.len() as u32).to_le_bytes());
        v.extend_from_slice(&z); // not padded
        v
    }

    /// Two 2×3×3 images; pixel (i, j, ch, n) = 100n + 10ch + 3i + j; labels [10, 3].
    fn x_data() -> Vec<u8> {
        let mut v = Vec::new();
        for n in 0..2u8 {
            for ch in 0..3u8 {
                for j in 0..3u8 {
                    for i in 0..2u8 {
                        v.push(100 * n + 10 * ch + 3 * i + j);
                    }
                }
            }
        }
        v
    }

    fn check(d: &Dataset) {
        assert_eq!((d.n, d.c, d.h, d.w, d.classes), (2, 3, 2, 3, 10));
        assert_eq!(d.labels, vec![0, 3]);
        // image 1, channel 2, row-major rows: 100 + 20 + [0 1 2; 3 4 5]
        assert_eq!(&d.image(1)[12..18], &[120, 121, 122, 123, 124, 125]);
        assert_eq!(&d.image(0)[..6], &[0, 1, 2, 3, 4, 5]);
    }

    fn write(bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("train_32x32.mat");
        std::fs::write(&p, bytes).unwrap();
        (d, p)
    }

    fn doubles(v: &[f64]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn uncompressed_and_compressed() {
        let xm = matrix("X", 9, &[2, 3, 3, 2], MI_UINT8, &x_data(), true);
        let ym = matrix("y", 6, &[2, 1], MI_DOUBLE, &doubles(&[10.0, 3.0]), false);
        let other = matrix("junk", 6, &[1, 1], MI_DOUBLE, &doubles(&[1.0]), false);

        let mut plain = header();
        plain.extend(&other);
        plain.extend(&ym);
        plain.extend(&xm);
        let (dir, _) = write(&plain);
        check(&load_svhn(dir.path(), Split::Train).unwrap());

        let mut comp = header();
        comp.extend(compressed(&xm));
        // MATLAB stores a double array with small integer values as miUINT8 data
        comp.extend(compressed(&matrix("y", 6, &[1, 2], MI_UINT8, &[10, 3], false)));
        let (_d, p) = write(&comp);
        check(&load_svhn_mat(&p).unwrap());

        // X given as doubles, y as int16
        let xd: Vec<f64> = x_data().iter().map(|&b| b as f64).collect();
        let mut mixed = header();
        mixed.extend(matrix("X", 6, &[2, 3, 3, 2], MI_DOUBLE, &doubles(&xd), false));
        mixed.extend(compressed(&matrix("y", 6, &[2, 1], MI_INT16, &[10, 0, 3, 0], false)));
        let (_d, p) = write(&mixed);
        check(&load_svhn_mat(&p).unwrap());
    }

    #[test]
    fn bad_files() {
        let xm = matrix("X", 9, &[2, 3, 3, 2], MI_UINT8, &x_data(), true);
        let ym = matrix("y", 6, &[2, 1], MI_DOUBLE, &doubles(&[10.0, 3.0]), false);
        let err = |b: &[u8]| {
            let (_d, p) = write(b);
            load_svhn_mat(&p).unwrap_err().to_string()
        };
        let mut good = header();
        good.extend(&xm);
        good.extend(&ym);

        let e = err(&good[..100]);
        assert!(e.ends_with("train_32x32.mat: truncated: 100 bytes, shorter than the 128-byte MAT-file header"), "{e}");
        let mut b = good.clone();
        b[126..128].copy_from_slice(b"XX");
        let e = err(&b);
        assert!(e.ends_with("train_32x32.mat: bad magic number \"XX\" (expected \"IM\" or \"MI\" at byte 126, a MATLAB v5 MAT-file)"), "{e}");
        let mut b = good.clone();
        b[..6].copy_from_slice(b"HELLO!");
        assert!(err(&b).contains("bad magic number \"HELLO!\""));
        let e = err(&good[..good.len() - 5]);
        assert!(e.contains("train_32x32.mat: truncated: top level: element of type 14 claims"), "{e}");
        let mut cut = header();
        let c = compressed(&xm);
        cut.extend(&c[..c.len() - 4]);
        let e = err(&cut);
        assert!(e.contains("truncated"), "{e}");
        // label out of range
        let mut b = header();
        b.extend(&xm);
        b.extend(matrix("y", 6, &[2, 1], MI_DOUBLE, &doubles(&[10.0, 11.0]), false));
        let e = err(&b);
        assert!(
            e.ends_with(
                "train_32x32.mat: label 11 of item 1 is out of range (expected 1..=10, with 10 for the digit 0)"
            ),
            "{e}"
        );
        // wrong number of labels
        let mut b = header();
        b.extend(&xm);
        b.extend(matrix("y", 6, &[3, 1], MI_DOUBLE, &doubles(&[1.0, 2.0, 3.0]), false));
        let e = err(&b);
        assert!(e.ends_with("wrong size: y has dimensions [3, 1] but X holds 2 images"), "{e}");
        // dims that do not match the data
        let mut b = header();
        b.extend(matrix("X", 9, &[2, 3, 3, 3], MI_UINT8, &x_data(), true));
        b.extend(&ym);
        let e = err(&b);
        assert!(e.ends_with("wrong size: variable X has dimensions [2, 3, 3, 3] but 36 bytes of 1-byte values"), "{e}");
        // missing variable
        let mut b = header();
        b.extend(&ym);
        assert!(err(&b).ends_with("train_32x32.mat: no numeric variable X (the images) in the MAT-file"));
        let mut b = header();
        b[..10].copy_from_slice(b"MATLAB 7.3");
        b.resize(600, 0);
        assert!(err(&b).contains("v7.3 (HDF5) is not supported"));
        let d = tempfile::tempdir().unwrap();
        let e = load_svhn(d.path(), Split::Test).unwrap_err().to_string();
        assert!(e.contains("test_32x32.mat: not found; get") && e.contains("housenumbers"), "{e}");
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Vec<u8> {
        let mut h = b"MATLAB 5.0 MAT-file".to_vec();
        h.resize(124, b' ');
        h.extend_from_slice(&[0, 1, b'I', b'M']);
        // X: 1×1×1×2 uint8, y: 2×1 uint8, second one zlib-compressed
        let body = |name: u8, dims: [i32; 4], data: &[u8]| {
            let mut b = vec![6, 0, 0, 0, 8, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0];
            b.extend_from_slice(&[5, 0, 0, 0, 16, 0, 0, 0]);
            dims.iter().for_each(|d| b.extend_from_slice(&d.to_le_bytes()));
            b.extend_from_slice(&[1, 0, 1, 0, name, 0, 0, 0]);
            b.extend_from_slice(&[2, 0, data.len() as u8, 0]);
            b.extend_from_slice(data);
            b.resize(b.len().div_ceil(8) * 8, 0);
            let mut e = vec![14, 0, 0, 0];
            e.extend_from_slice(&(b.len() as u32).to_le_bytes());
            e.extend(b);
            e
        };
        h.extend(body(b'X', [1, 1, 1, 2], &[7, 8]));
        let y = body(b'y', [2, 1, 1, 1], &[10, 4]);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut z, &y).unwrap();
        let z = z.finish().unwrap();
        h.extend_from_slice(&[15, 0, 0, 0]);
        h.extend_from_slice(&(z.len() as u32).to_le_bytes());
        h.extend(z);
        h
    }

    #[test]
    fn sample_loads() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.mat");
        std::fs::write(&p, sample()).unwrap();
        let ds = load_svhn_mat(&p).unwrap();
        assert_eq!(
            (ds.n, ds.c, ds.h, ds.w, ds.labels.clone(), ds.images.clone()),
            (2, 1, 1, 1, vec![0, 4], vec![7, 8])
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// Corrupted or cut MAT-files give errors, never panics.
        #[test]
        fn corrupt_mat_never_panics(cut in 0usize..400, flips in proptest::collection::vec((128usize..400, any::<u8>()), 0..4)) {
            let mut b = sample();
            for (at, v) in flips {
                if at < b.len() {
                    b[at] = v;
                }
            }
            b.truncate(cut.max(1));
            let d = tempfile::tempdir().unwrap();
            let p = d.path().join("s.mat");
            std::fs::write(&p, &b).unwrap();
            if let Err(e) = load_svhn_mat(&p) {
                prop_assert!(!e.to_string().contains('\n'));
            }
        }
    }
}
