//! eStargz TOC (stargz.index.json) → tree.
