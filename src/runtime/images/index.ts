// Public surface of the image builders.
export { createDebianImageBuilder, DEBIAN_BUILDER_VERSION, KERNEL_FILE, MANIFEST_FILE } from "./debian-image-builder.js";
export type { DebianImageBuilderOptions, RevisionManifest } from "./debian-image-builder.js";
export { INITRAMFS_FILE } from "./initramfs.js";
export { ROOTFS_FILE, BASE_PACKAGES } from "./rootfs.js";
export { execaCommandRunner, CommandError } from "./command-runner.js";
export type { CommandRunner, CommandOptions, CommandResult } from "./command-runner.js";
