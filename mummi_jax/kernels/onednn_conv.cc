// oneDNN's direct convolutions as XLA FFI handlers: the encoders' k x k, VALID, strided
// convolution, its input gradient and its weight gradient, for XLA:CPU.
//
// Why: on a CPU, XLA lowers these layers to patch matrices and GEMMs that run at 60-150
// GFLOP/s at the encoders' shapes, while oneDNN's direct (brgemm) kernels, which the
// released TensorFlow code runs, compute them without patches (BENCHMARKS.md, "oneDNN's
// convolutions inside the jitted update"). mummi_jax/kernels/onednn.py registers these and
// wraps them in a custom VJP.
//
// Layouts are the ones JAX hands over, so nothing is copied on the way in or out:
// activations NHWC, kernels HWIO (flax's nn.Conv). Only the small kernels are reordered into
// the blocked layout the chosen implementation wants. Every handler turns a oneDNN error
// into an FFI error: no exception crosses into XLA.
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using tag = dnnl::memory::format_tag;
using dims = dnnl::memory::dims;
constexpr auto f32 = dnnl::memory::data_type::f32;

dnnl::engine& cpu() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

struct Geometry {
  int64_t n, h, w, c, k, o, stride, oh, ow;
  dims src() const { return {n, c, h, w}; }
  dims weights() const { return {o, c, k, k}; }
  dims dst() const { return {n, o, oh, ow}; }
  auto key() const { return std::make_tuple(n, h, w, c, k, o, stride); }
};

// The primitives of one geometry, created once (creating one compiles its kernel): the
// forward alone and with bias and ReLU applied as it writes (a post-op: no second pass over
// the output), the input gradient and the weight gradient.
struct Primitives {
  dnnl::convolution_forward::primitive_desc fwd_pd;
  dnnl::convolution_forward::primitive_desc fwd_bias_relu_pd;
  dnnl::convolution_backward_data::primitive_desc data_pd;
  dnnl::convolution_backward_weights::primitive_desc weights_pd;
  dnnl::convolution_forward fwd;
  dnnl::convolution_forward fwd_bias_relu;
  dnnl::convolution_backward_data data;
  dnnl::convolution_backward_weights weights;
};

std::unique_ptr<Primitives> create(const Geometry& g) {
  dims strides{g.stride, g.stride}, pad{0, 0};
  // Activations stay NHWC (JAX's layout); the kernels' layout is the implementation's.
  auto src = dnnl::memory::desc(g.src(), f32, tag::nhwc);
  auto dst = dnnl::memory::desc(g.dst(), f32, tag::nhwc);
  auto wei = dnnl::memory::desc(g.weights(), f32, tag::any);
  auto algo = dnnl::algorithm::convolution_direct;
  dnnl::convolution_forward::primitive_desc fwd(
      cpu(), dnnl::prop_kind::forward_training, algo, src, wei, dst, strides, pad, pad);
  auto bias = dnnl::memory::desc({g.o}, f32, tag::a);
  dnnl::post_ops relu;
  relu.append_eltwise(dnnl::algorithm::eltwise_relu, 0.f, 0.f);
  dnnl::primitive_attr attr;
  attr.set_post_ops(relu);
  dnnl::convolution_forward::primitive_desc fwd_bias_relu(
      cpu(), dnnl::prop_kind::forward_training, algo, src, wei, bias, dst, strides, pad, pad,
      attr);
  dnnl::convolution_backward_data::primitive_desc data(
      cpu(), algo, src, wei, dst, strides, pad, pad, fwd);
  dnnl::convolution_backward_weights::primitive_desc weights(
      cpu(), algo, src, wei, dst, strides, pad, pad, fwd);
  return std::unique_ptr<Primitives>(new Primitives{
      fwd, fwd_bias_relu, data, weights, dnnl::convolution_forward(fwd),
      dnnl::convolution_forward(fwd_bias_relu), dnnl::convolution_backward_data(data),
      dnnl::convolution_backward_weights(weights)});
}

const Primitives& primitives(const Geometry& g) {
  static std::mutex mutex;
  static std::map<decltype(g.key()), std::unique_ptr<Primitives>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(g.key());
  if (it == cache.end()) it = cache.emplace(g.key(), create(g)).first;
  return *it->second;
}

dnnl::memory::desc hwio(const Geometry& g) {
  return dnnl::memory::desc(g.weights(), f32, tag::hwio);
}

// The user's HWIO kernel, reordered into `want` when that differs.
dnnl::memory kernel_in(dnnl::stream& s, const Geometry& g, const float* data,
                       const dnnl::memory::desc& want) {
  dnnl::memory user(hwio(g), cpu(), const_cast<float*>(data));
  if (want == user.get_desc()) return user;
  dnnl::memory blocked(want, cpu());
  dnnl::reorder(user, blocked).execute(s, user, blocked);
  return blocked;
}

ffi::Error check(const Geometry& g, ffi::Span<const int64_t> x, ffi::Span<const int64_t> w,
                 ffi::Span<const int64_t> y) {
  if (x.size() != 4 || w.size() != 4 || y.size() != 4)
    return ffi::Error::InvalidArgument("onednn conv: operands must be rank 4 (NHWC, HWIO)");
  if (w[0] != w[1] || w[2] != x[3] || g.stride < 1 || g.oh < 1 || g.ow < 1 ||
      y[0] != x[0] || y[1] != g.oh || y[2] != g.ow || y[3] != w[3])
    return ffi::Error::InvalidArgument(
        "onednn conv: shapes do not match a square-kernel VALID convolution");
  return ffi::Error::Success();
}

Geometry geometry(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w, int64_t stride) {
  if (x.size() != 4 || w.size() != 4) return Geometry{0, 0, 0, 0, 0, 0, 0, 0, 0};
  int64_t k = w[0];
  return Geometry{x[0], x[1], x[2], x[3], k, w[3], stride,
                  stride > 0 ? (x[1] - k) / stride + 1 : 0,
                  stride > 0 ? (x[2] - k) / stride + 1 : 0};
}

// One convolution at a time: each already runs on every core (OpenMP), and XLA:CPU would
// otherwise start independent ones together (the two image encoders), each with its own
// thread team, and oversubscribe the cores.
std::mutex& one_at_a_time() {
  static std::mutex mutex;
  return mutex;
}

template <typename Body>
ffi::Error guarded(Body body) {
  std::lock_guard<std::mutex> lock(one_at_a_time());
  try {
    return body();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN: ") + e.what());
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("onednn conv: ") + e.what());
  }
}

// One forward convolution, plain or with bias and ReLU (`bias` null: plain): the two
// handlers below differ only in the primitive and the bias argument.
ffi::Error forward(ffi::Buffer<ffi::F32>& x, ffi::Buffer<ffi::F32>& w, const float* bias,
                   int64_t bias_size, ffi::ResultBuffer<ffi::F32>& y, int64_t stride) {
  return guarded([&] {
    Geometry g = geometry(x.dimensions(), w.dimensions(), stride);
    if (auto e = check(g, x.dimensions(), w.dimensions(), y->dimensions()); e.failure()) return e;
    if (bias != nullptr && bias_size != g.o)
      return ffi::Error::InvalidArgument("onednn conv: the bias must be (O,)");
    const Primitives& p = primitives(g);
    const auto& pd = bias != nullptr ? p.fwd_bias_relu_pd : p.fwd_pd;
    dnnl::stream s(cpu());
    dnnl::memory src(pd.src_desc(), cpu(), x.typed_data());
    dnnl::memory dst(pd.dst_desc(), cpu(), y->typed_data());
    auto wei = kernel_in(s, g, w.typed_data(), pd.weights_desc());
    std::unordered_map<int, dnnl::memory> args{
        {DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, dst}};
    if (bias != nullptr)
      args.insert({DNNL_ARG_BIAS, dnnl::memory(pd.bias_desc(), cpu(), const_cast<float*>(bias))});
    (bias != nullptr ? p.fwd_bias_relu : p.fwd).execute(s, args);
    s.wait();
    return ffi::Error::Success();
  });
}

// x (N, H, W, C), w (K, K, C, O) -> y (N, OH, OW, O)
ffi::Error Forward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                   ffi::ResultBuffer<ffi::F32> y, int64_t stride) {
  return forward(x, w, nullptr, 0, y, stride);
}

// x (N, H, W, C), w (K, K, C, O), b (O) -> y = relu(conv(x, w) + b) (N, OH, OW, O)
ffi::Error ForwardBiasRelu(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                           ffi::Buffer<ffi::F32> b, ffi::ResultBuffer<ffi::F32> y,
                           int64_t stride) {
  int64_t size = b.dimensions().size() == 1 ? b.dimensions()[0] : -1;
  return forward(x, w, b.typed_data(), size, y, stride);
}

// dy (N, OH, OW, O), w (K, K, C, O) -> dx (N, H, W, C)
ffi::Error InputGradient(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w,
                         ffi::ResultBuffer<ffi::F32> dx, int64_t stride) {
  return guarded([&] {
    Geometry g = geometry(dx->dimensions(), w.dimensions(), stride);
    if (auto e = check(g, dx->dimensions(), w.dimensions(), dy.dimensions()); e.failure())
      return e;
    const Primitives& p = primitives(g);
    dnnl::stream s(cpu());
    dnnl::memory ddst(p.data_pd.diff_dst_desc(), cpu(), dy.typed_data());
    dnnl::memory dsrc(p.data_pd.diff_src_desc(), cpu(), dx->typed_data());
    auto wei = kernel_in(s, g, w.typed_data(), p.data_pd.weights_desc());
    p.data.execute(s, {{DNNL_ARG_DIFF_DST, ddst}, {DNNL_ARG_WEIGHTS, wei},
                       {DNNL_ARG_DIFF_SRC, dsrc}});
    s.wait();
    return ffi::Error::Success();
  });
}

// x (N, H, W, C), dy (N, OH, OW, O) -> dw (K, K, C, O)
ffi::Error KernelGradient(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                          ffi::ResultBuffer<ffi::F32> dw, int64_t stride) {
  return guarded([&] {
    Geometry g = geometry(x.dimensions(), dw->dimensions(), stride);
    if (auto e = check(g, x.dimensions(), dw->dimensions(), dy.dimensions()); e.failure())
      return e;
    const Primitives& p = primitives(g);
    dnnl::stream s(cpu());
    dnnl::memory src(p.weights_pd.src_desc(), cpu(), x.typed_data());
    dnnl::memory ddst(p.weights_pd.diff_dst_desc(), cpu(), dy.typed_data());
    dnnl::memory user(hwio(g), cpu(), dw->typed_data());
    auto want = p.weights_pd.diff_weights_desc();
    dnnl::memory dwei = want == user.get_desc() ? user : dnnl::memory(want, cpu());
    p.weights.execute(s, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, ddst},
                          {DNNL_ARG_DIFF_WEIGHTS, dwei}});
    if (!(want == user.get_desc())) dnnl::reorder(dwei, user).execute(s, dwei, user);
    s.wait();
    return ffi::Error::Success();
  });
}

}  // namespace

#define MUMMI_CONV_BINDING                  \
  ffi::Ffi::Bind()                          \
      .Arg<ffi::Buffer<ffi::F32>>()         \
      .Arg<ffi::Buffer<ffi::F32>>()         \
      .Ret<ffi::Buffer<ffi::F32>>()         \
      .Attr<int64_t>("stride")

XLA_FFI_DEFINE_HANDLER_SYMBOL(mummi_conv_forward, Forward, MUMMI_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(mummi_conv_forward_bias_relu, ForwardBiasRelu,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(mummi_conv_input_gradient, InputGradient, MUMMI_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(mummi_conv_kernel_gradient, KernelGradient, MUMMI_CONV_BINDING);
