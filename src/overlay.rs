//! overlayfs assembly: EROFS metadata lower + data-only object lowers, attached or handed out as an fd.
