# tests/bench: dockerfiles/kmm-module.Dockerfile with one change, `make -j$(nproc)`, for the module
# tree of tests/bench/gen-module-tree.sh (~200 modules; a serial make would spend minutes compiling
# what both tools then build identically). Same build arguments, same layout: every .ko under
# /opt/lib/modules/${KERNEL_FULL_VERSION}/, then depmod.
ARG DTK_AUTO
ARG RUNTIME_IMAGE

FROM ${DTK_AUTO} AS builder
ARG KERNEL_FULL_VERSION
WORKDIR /build
COPY . .
RUN make -j"$(nproc)" -C /usr/src/linux-headers-${KERNEL_FULL_VERSION} M=/build modules

FROM ${RUNTIME_IMAGE}
ARG KERNEL_FULL_VERSION
ARG MOD_NAME
COPY --from=builder /build/*.ko /opt/lib/modules/${KERNEL_FULL_VERSION}/
RUN depmod -b /opt ${KERNEL_FULL_VERSION}
LABEL io.kforge.module=${MOD_NAME} io.kforge.kernel=${KERNEL_FULL_VERSION}
