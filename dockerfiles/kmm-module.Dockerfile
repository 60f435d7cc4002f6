# A kernel-module image in KMM's layout, built from a Driver Toolkit image.
#
# Build arguments (KMM injects them; kforge build takes them with --build-arg):
#   DTK_AUTO             the Driver Toolkit image for the node's kernel (compiler + kernel headers)
#   KERNEL_FULL_VERSION  the kernel the module is built for (node.status.nodeInfo.kernelVersion)
#   MOD_NAME             the module's name
#   RUNTIME_IMAGE        the small image the module ships in; it needs kmod (modprobe, depmod)
# The build context holds the module's sources (a Kbuild or Makefile for an out-of-tree module).
ARG DTK_AUTO
ARG RUNTIME_IMAGE

FROM ${DTK_AUTO} AS builder
ARG KERNEL_FULL_VERSION
WORKDIR /build
COPY . .
RUN make -C /usr/src/linux-headers-${KERNEL_FULL_VERSION} M=/build modules

FROM ${RUNTIME_IMAGE}
ARG KERNEL_FULL_VERSION
ARG MOD_NAME
COPY --from=builder /build/*.ko /opt/lib/modules/${KERNEL_FULL_VERSION}/
RUN depmod -b /opt ${KERNEL_FULL_VERSION}
LABEL io.kforge.module=${MOD_NAME} io.kforge.kernel=${KERNEL_FULL_VERSION}
