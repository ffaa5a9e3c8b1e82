//! Attaching an image as a block device: loop devices configured with one LOOP_CONFIGURE.
