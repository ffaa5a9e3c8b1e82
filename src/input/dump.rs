//! composefs dumpfile text format → tree, and tree → dumpfile text.
