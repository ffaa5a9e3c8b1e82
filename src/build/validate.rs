//! Validation of what comes back from the sandboxed child: its bytes are untrusted. The image
//! must have the composefs header and EROFS superblock the writer makes (checked through the one
//! header codec, [`crate::erofs::format::ImageHeader`]), and the superblock's block count must
//! cover exactly the file. (The mount stage then treats the image as hostile EROFS anyway.)

use std::fs::File;
use std::os::fd::AsFd;

use super::{BuildError, BuildInfo};
use crate::erofs::format::ImageHeader;

pub(crate) fn validate_image(f: &File) -> Result<BuildInfo, BuildError> {
    let size = f.metadata().map_err(BuildError::step("fstat of the built image"))?.len();
    let header = ImageHeader::read_from(f.as_fd())?;
    header.check_composefs(size)?;
    header.check_block_count(size)?;
    Ok(BuildInfo { image_size: size, version: header.format_version() })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::build::{build_from_reader, BuildRequest, InputFormat};

    #[test]
    fn accepts_what_the_writer_makes_and_refuses_the_rest() {
        let json = br#"{"version":1,"entries":[{"type":"reg","name":"a","x-content":"aGk="}]}"#;
        let mut img = Vec::new();
        build_from_reader(&BuildRequest::new(InputFormat::Toc), &mut &json[..], &mut img).unwrap();
        let file = |bytes: &[u8]| {
            let mut f = tempfile::tempfile().unwrap();
            f.write_all(bytes).unwrap();
            f
        };
        let info = validate_image(&file(&img)).unwrap();
        assert_eq!((info.image_size, info.version), (img.len() as u64, 0));

        let err = |bytes: &[u8]| validate_image(&file(bytes)).unwrap_err().to_string();
        assert!(err(&img[..1000]).contains("shorter than"), "{}", err(&img[..1000]));
        let mut bad = img.clone();
        bad[1024] ^= 1;
        assert!(err(&bad).contains("EROFS magic"), "{}", err(&bad));
        // One block more than the superblock counts.
        let mut long = img.clone();
        long.extend_from_slice(&[0; 4096]);
        assert!(err(&long).contains("blocks of 4096 bytes"), "{}", err(&long));
        assert!(err(&long).starts_with("the sandboxed builder returned an invalid image"), "{}", err(&long));
    }
}
