//! Building the `debian-base` template with debootstrap.
