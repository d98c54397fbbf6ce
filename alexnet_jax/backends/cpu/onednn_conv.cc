// 2-D convolutions on the CPU by oneDNN, as XLA FFI handlers: forward, input gradient and
// kernel gradient of an NHWC x HWIO convolution in float32 or bfloat16 (all operands of one
// type; oneDNN accumulates in float32) with a square stride and explicit zero padding.
// alexnet_jax/backends/cpu/onednn.py compiles this file, registers the three handlers and
// documents the contract.
//
// Activations stay NHWC in XLA's buffers (oneDNN's `nhwc` tag reads them in place). Kernels
// are HWIO in XLA and are reordered to and from the blocked layout oneDNN's kernel prefers,
// which is small next to the convolution.
//
// Threads: XLA runs each device's program on a thread of its own, and may call these from
// several at once. oneDNN's contract for that: a primitive runs in the thread that built it
// (its gemm-based convolution, its choice on AVX2 CPUs for conv1's 3 input channels, crashed
// otherwise), and with the user-managed scratchpad mode a primitive's scratch memory is the
// caller's, so executions in different threads never share one. Primitives (and their
// scratchpads) are built once per shape and calling thread, and kept.

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using dnnl::memory;
using Tag = memory::format_tag;
using Type = memory::data_type;

enum class Part { kForward, kInputGrad, kKernelGrad };

// One convolution: x (n, h, w, c) * k (kh, kw, c, o) -> y (n, oh, ow, o), all of `type`.
struct Geometry {
  Type type;
  int64_t n, h, w, c, kh, kw, o, oh, ow, stride, pad_top, pad_bottom, pad_left, pad_right;
  auto key(Part part) const {
    return std::make_tuple(static_cast<int>(part), static_cast<int>(type), n, h, w, c, kh,
                           kw, o, oh, ow, stride, pad_top, pad_bottom, pad_left, pad_right);
  }
  memory::desc x() const { return memory::desc({n, c, h, w}, type, Tag::nhwc); }
  memory::desc y() const { return memory::desc({n, o, oh, ow}, type, Tag::nhwc); }
  memory::desc kernel(Tag tag) const { return memory::desc({o, c, kh, kw}, type, tag); }
  memory::dims strides() const { return {stride, stride}; }
  memory::dims pad_l() const { return {pad_top, pad_left}; }
  memory::dims pad_r() const { return {pad_bottom, pad_right}; }
};

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// Every primitive takes its scratch memory from the caller (see the threads note above).
dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

dnnl::convolution_forward::primitive_desc ForwardDesc(const Geometry& g) {
  return dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, g.x(),
      g.kernel(Tag::any), g.y(), g.strides(), g.pad_l(), g.pad_r(), UserScratchpad());
}

// A primitive that brings its own scratch memory.
struct Step {
  dnnl::primitive primitive;
  memory scratchpad;

  template <typename Primitive, typename Desc>
  static Step Of(const Desc& pd) {
    return {Primitive(pd), memory(pd.scratchpad_desc(), Engine())};
  }
  void Execute(dnnl::stream& stream, std::unordered_map<int, memory> args) {
    args.insert({DNNL_ARG_SCRATCHPAD, scratchpad});
    primitive.execute(stream, args);
  }
};

// A primitive of one part and shape, with the kernel's layout as the primitive wants it.
struct Plan {
  Step conv;
  memory::desc kernel_desc;  // The primitive's (maybe blocked) kernel layout.
  bool reorder;              // Whether that differs from XLA's HWIO.
  Step to_blocked, from_blocked;
};

std::unique_ptr<Plan> MakePlan(Part part, const Geometry& g) {
  auto plan = std::make_unique<Plan>();
  auto forward = ForwardDesc(g);
  switch (part) {
    case Part::kForward:
      plan->conv = Step::Of<dnnl::convolution_forward>(forward);
      plan->kernel_desc = forward.weights_desc();
      break;
    case Part::kInputGrad: {
      dnnl::convolution_backward_data::primitive_desc pd(
          Engine(), dnnl::algorithm::convolution_direct, g.x(), g.kernel(Tag::any), g.y(),
          g.strides(), g.pad_l(), g.pad_r(), forward, UserScratchpad());
      plan->conv = Step::Of<dnnl::convolution_backward_data>(pd);
      plan->kernel_desc = pd.weights_desc();
      break;
    }
    case Part::kKernelGrad: {
      dnnl::convolution_backward_weights::primitive_desc pd(
          Engine(), dnnl::algorithm::convolution_direct, g.x(), g.kernel(Tag::any), g.y(),
          g.strides(), g.pad_l(), g.pad_r(), forward, UserScratchpad());
      plan->conv = Step::Of<dnnl::convolution_backward_weights>(pd);
      plan->kernel_desc = pd.diff_weights_desc();
      break;
    }
  }
  auto hwio = g.kernel(Tag::hwio);
  plan->reorder = plan->kernel_desc != hwio;
  if (plan->reorder) {
    plan->to_blocked = Step::Of<dnnl::reorder>(dnnl::reorder::primitive_desc(
        Engine(), hwio, Engine(), plan->kernel_desc, UserScratchpad()));
    plan->from_blocked = Step::Of<dnnl::reorder>(dnnl::reorder::primitive_desc(
        Engine(), plan->kernel_desc, Engine(), hwio, UserScratchpad()));
  }
  return plan;
}

// Runs `part` on XLA's buffers: x (NHWC), kernel (HWIO), y (NHWC); the part's output is y
// (forward), x (input gradient) or the kernel (kernel gradient).
ffi::Error Run(Part part, const Geometry& g, void* x, void* kernel, void* y) {
  static thread_local std::map<decltype(g.key(part)), std::unique_ptr<Plan>> plans;
  try {
    auto& plan = plans[g.key(part)];
    if (!plan) plan = MakePlan(part, g);
    dnnl::stream stream(Engine());
    memory x_mem(g.x(), Engine(), x), y_mem(g.y(), Engine(), y);
    memory hwio(g.kernel(Tag::hwio), Engine(), kernel);
    memory k_mem = plan->reorder ? memory(plan->kernel_desc, Engine()) : hwio;
    if (plan->reorder && part != Part::kKernelGrad) {
      plan->to_blocked.Execute(stream, {{DNNL_ARG_FROM, hwio}, {DNNL_ARG_TO, k_mem}});
    }
    switch (part) {
      case Part::kForward:
        plan->conv.Execute(stream, {{DNNL_ARG_SRC, x_mem}, {DNNL_ARG_WEIGHTS, k_mem},
                                    {DNNL_ARG_DST, y_mem}});
        break;
      case Part::kInputGrad:
        plan->conv.Execute(stream, {{DNNL_ARG_DIFF_SRC, x_mem}, {DNNL_ARG_WEIGHTS, k_mem},
                                    {DNNL_ARG_DIFF_DST, y_mem}});
        break;
      case Part::kKernelGrad:
        plan->conv.Execute(stream, {{DNNL_ARG_SRC, x_mem}, {DNNL_ARG_DIFF_WEIGHTS, k_mem},
                                    {DNNL_ARG_DIFF_DST, y_mem}});
        if (plan->reorder) {
          plan->from_blocked.Execute(stream, {{DNNL_ARG_FROM, k_mem}, {DNNL_ARG_TO, hwio}});
        }
        break;
    }
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

using Buffer = ffi::AnyBuffer;
using Result = ffi::Result<ffi::AnyBuffer>;

// The geometry of x * kernel -> y, or an error if their types are not one supported type.
ffi::ErrorOr<Geometry> Shape(const Buffer& x, const Buffer& kernel, const Buffer& y,
                             int64_t stride, int64_t pad_top, int64_t pad_bottom,
                             int64_t pad_left, int64_t pad_right) {
  auto dtype = x.element_type();
  if (kernel.element_type() != dtype || y.element_type() != dtype ||
      (dtype != ffi::DataType::F32 && dtype != ffi::DataType::BF16)) {
    return ffi::Unexpected<ffi::Error>(
        ffi::Error::InvalidArgument("oneDNN conv: operands must all be f32 or all bf16"));
  }
  auto xd = x.dimensions(), kd = kernel.dimensions(), yd = y.dimensions();
  return Geometry{dtype == ffi::DataType::F32 ? Type::f32 : Type::bf16,
                  xd[0], xd[1], xd[2], xd[3], kd[0], kd[1], kd[3], yd[1], yd[2],
                  stride, pad_top, pad_bottom, pad_left, pad_right};
}

ffi::Error Forward(Buffer x, Buffer kernel, Result y, int64_t stride, int64_t pad_top,
                   int64_t pad_bottom, int64_t pad_left, int64_t pad_right) {
  auto g = Shape(x, kernel, *y, stride, pad_top, pad_bottom, pad_left, pad_right);
  if (g.has_error()) return g.error();
  return Run(Part::kForward, g.value(), x.untyped_data(), kernel.untyped_data(),
             y->untyped_data());
}

ffi::Error InputGrad(Buffer dy, Buffer kernel, Result dx, int64_t stride, int64_t pad_top,
                     int64_t pad_bottom, int64_t pad_left, int64_t pad_right) {
  auto g = Shape(*dx, kernel, dy, stride, pad_top, pad_bottom, pad_left, pad_right);
  if (g.has_error()) return g.error();
  return Run(Part::kInputGrad, g.value(), dx->untyped_data(), kernel.untyped_data(),
             dy.untyped_data());
}

ffi::Error KernelGrad(Buffer x, Buffer dy, Result dk, int64_t stride, int64_t pad_top,
                      int64_t pad_bottom, int64_t pad_left, int64_t pad_right) {
  auto g = Shape(x, *dk, dy, stride, pad_top, pad_bottom, pad_left, pad_right);
  if (g.has_error()) return g.error();
  return Run(Part::kKernelGrad, g.value(), x.untyped_data(), dk->untyped_data(),
             dy.untyped_data());
}

template <typename Binding>
auto WithAttrs(Binding binding) {
  return std::move(binding).template Attr<int64_t>("stride")
      .template Attr<int64_t>("pad_top")
      .template Attr<int64_t>("pad_bottom")
      .template Attr<int64_t>("pad_left")
      .template Attr<int64_t>("pad_right");
}

}  // namespace

// Whether this CPU has oneDNN kernels for all three parts in float32 (`bf16` = 0) or
// bfloat16 (`bf16` = 1): bfloat16 needs AVX-512 or newer (on AVX2 alone the primitive
// descriptors cannot be created).
extern "C" int AlexnetConvSupports(int bf16) {
  Geometry g{bf16 ? Type::bf16 : Type::f32, 2, 8, 8, 16, 3, 3, 16, 8, 8, 1, 1, 1, 1, 1};
  try {
    for (Part part : {Part::kForward, Part::kInputGrad, Part::kKernelGrad}) MakePlan(part, g);
  } catch (const dnnl::error&) {
    return 0;
  }
  return 1;
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(AlexnetConvForward, Forward,
                              WithAttrs(ffi::Ffi::Bind().Arg<Buffer>().Arg<Buffer>().Ret<Buffer>()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(AlexnetConvInputGrad, InputGrad,
                              WithAttrs(ffi::Ffi::Bind().Arg<Buffer>().Arg<Buffer>().Ret<Buffer>()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(AlexnetConvKernelGrad, KernelGrad,
                              WithAttrs(ffi::Ffi::Bind().Arg<Buffer>().Arg<Buffer>().Ret<Buffer>()));
