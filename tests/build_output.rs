//! The build engine's outputs, through the real sandbox (no privileges needed): an anonymous
//! output hands back an image that is nowhere on disk; a path output appears only complete.

use std::io::Read;

use cfsmount::build::{build_image, BuildOptions, BuildRequest, InputFormat, Output, Source};

const TOC: &[u8] =
    br#"{"version":1,"entries":[{"type":"reg","name":"a","x-content":"aGk="},{"type":"dir","name":"d"}]}"#;

fn toc_file(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("toc.json");
    std::fs::write(&p, TOC).unwrap();
    p
}

fn entries(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn anonymous_output_is_an_unnamed_file_holding_the_image() {
    let src = tempfile::tempdir().unwrap();
    let toc = toc_file(src.path());
    let mut want = Vec::new();
    cfsmount::build::build_from_reader(&BuildRequest::new(InputFormat::Toc), &mut &TOC[..], &mut want).unwrap();

    let dir = tempfile::tempdir().unwrap();
    for out in [Output::Anonymous { dir: Some(dir.path().to_path_buf()) }, Output::Anonymous { dir: None }] {
        let req = BuildRequest::new(InputFormat::Toc);
        let (info, file) = build_image(&req, Source::Path(toc.clone()), &out, &BuildOptions::default())
            .unwrap_or_else(|e| panic!("{out:?}: {e}"));
        let mut file = file.expect("an anonymous output hands the file back");
        let mut got = Vec::new();
        file.read_to_end(&mut got).unwrap();
        assert_eq!(got, want, "{out:?}: not the image the untrusted stage writes");
        assert_eq!(info.image_size, want.len() as u64);
        // No name anywhere: the directory stays empty and the file has no links.
        assert_eq!(entries(dir.path()), Vec::<String>::new(), "{out:?}");
        assert_eq!(std::os::unix::fs::MetadataExt::nlink(&file.metadata().unwrap()), 0, "{out:?}");
    }
}

#[test]
fn failed_builds_leave_nothing_whatever_the_output() {
    let src = tempfile::tempdir().unwrap();
    let bad = src.path().join("bad.json");
    std::fs::write(&bad, br#"{"version":1,"entries":[{"type":"reg","name":"../x"}]}"#).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let outputs = [Output::Path(dir.path().join("img")), Output::Anonymous { dir: Some(dir.path().to_path_buf()) }];
    for out in outputs {
        let req = BuildRequest::new(InputFormat::Toc);
        let e = build_image(&req, Source::Path(bad.clone()), &out, &BuildOptions::default()).unwrap_err();
        assert!(e.to_string().contains("TOC entry 0"), "{out:?}: {e}");
        assert_eq!(entries(dir.path()), Vec::<String>::new(), "{out:?} left something behind");
    }
}
