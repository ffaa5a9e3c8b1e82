//! Directory on disk → tree (with --digest-store content copying).
