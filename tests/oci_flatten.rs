//! Flattening on real layers: the two layers of `real-layers/` (their zstd:chunked TOCs, with
//! whiteouts kept literal) flattened give exactly umoci's listing of the unpacked image
//! (`expected/image.tree.txt`), whiteouts, opaque directory, file<->directory and hard links
//! included.
#[path = "support/conformance.rs"]
mod conformance;
#[path = "support/listing.rs"]
mod listing;

use std::io::Read;

use cfsmount::input::toc::{parse, TocOptions};
use cfsmount::oci::flatten::flatten;
use cfsmount::tree::{Limits, Tree};

fn toc_tree(writer: &str, n: u32) -> Tree {
    let p = conformance::conformance_root().join(format!("real-layers/writers/{writer}/layer{n}.toc.json.gz"));
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&p).unwrap()).read_to_end(&mut json).unwrap();
    let opts = TocOptions { keep_whiteouts: true, ..TocOptions::default() };
    parse(&json, &opts).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn real_layers_flatten_to_umocis_listing() {
    let expected =
        std::fs::read_to_string(conformance::conformance_root().join("real-layers/expected/image.tree.txt")).unwrap();
    let mut images = Vec::new();
    for writer in ["skopeo-1.22.2-zstd-chunked", "skopeo-1.9.3-zstd-chunked", "cstorage-1.48.1-zstd-chunked"] {
        let layers = vec![toc_tree(writer, 1).into(), toc_tree(writer, 2).into()];
        let t = flatten(layers, Limits::default()).unwrap();
        let mut img = Vec::new();
        cfsmount::erofs::writer::write_image(&t, &Default::default(), &mut img).unwrap();
        images.push((writer, img));
        let got = listing::listing(&t);
        let want: Vec<&str> = expected.lines().collect();
        let diff: Vec<String> = got
            .iter()
            .filter(|l| !want.contains(&l.as_str()))
            .map(|l| format!("+{l}"))
            .chain(want.iter().filter(|l| !got.iter().any(|g| g == *l)).map(|l| format!("-{l}")))
            .collect();
        assert!(diff.is_empty(), "{writer}: {} lines differ:\n{}", diff.len(), diff.join("\n"));
        assert_eq!(got.len(), want.len(), "{writer}");
    }
    // The three writers' layers give one and the same flattened image, byte for byte.
    for (w, img) in &images[1..] {
        assert!(*img == images[0].1, "{w}: flattened image differs from {}'s", images[0].0);
    }
}
