// Runs the CUDA attention kernels under the host emulation of emu.h and compares them with attention computed
// in double precision from the same inputs: the tensor-core kernels (kernels/cuda/attention_tc.cu, bf16) and
// the general ones (kernels/cuda/attention.cu, f32, including the `_wide` head dims). Built and run by
// kernels/tests/cuda_emu.rs; exit status 0 when every case is within tolerance.
//
// Tolerance: max |kernel - reference| <= TOL * max |reference| per output: 2e-2 for the tensor-core kernels
// (the bf16 bound of `medgen verify`; P and dS are rounded to bf16 inside them, as in FlashAttention), 1e-4
// for the general f32 kernels.

#include "emu.h"

// clang-format off
#include "../common.cuh"
#include "../attention.cu"
#include "../attention_tc.cu"
// clang-format on

#include <random>
#include <string>

namespace {

constexpr double TOL_TC = 2e-2, TOL_F32 = 1e-4;

struct Case {
    int B, Lq, Lk, H, D;
    int dout_dt;   // DT_F32 or DT_BF16
    bool general;  // attention.cu with f32 q/k/v instead of attention_tc.cu with bf16
};

double rel_err(const std::vector<float>& got, const std::vector<double>& want) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < got.size(); ++i) {
        if (!std::isfinite(got[i])) return INFINITY;
        num = std::max(num, std::fabs((double)got[i] - want[i]));
        den = std::max(den, std::fabs(want[i]));
    }
    return den > 0 ? num / den : num;
}

bool run(const Case& c, std::mt19937& rng) {
    const int B = c.B, Lq = c.Lq, Lk = c.Lk, H = c.H, D = c.D;
    std::normal_distribution<float> nd(0.f, 1.f);
    auto bf = [](float x) { return f32_to_bf16_bits(x); };
    std::vector<bf16_t> q((size_t)B * Lq * H * D), k((size_t)B * Lk * H * D), v(k.size());
    // Larger query values sharpen the softmax, so the running max really moves between key tiles.
    for (auto& x : q) x = bf(2.f * nd(rng));
    for (auto& x : k) x = bf(nd(rng));
    for (auto& x : v) x = bf(nd(rng));
    std::vector<float> dof(q.size());
    for (auto& x : dof) x = nd(rng);
    std::vector<bf16_t> dob(q.size());
    for (size_t i = 0; i < dof.size(); ++i) {
        dob[i] = bf(dof[i]);
        if (c.dout_dt == DT_BF16) dof[i] = emu::bf16(dob[i]);
    }
    auto f = [](bf16_t x) { return (double)emu::bf16(x); };
    const double scale = 1.0 / std::sqrt((double)D);

    // Reference in double.
    std::vector<double> o_ref(q.size()), lse_ref((size_t)B * H * Lq), dq_ref(q.size(), 0.0), dk_ref(k.size(), 0.0),
        dv_ref(v.size(), 0.0);
    for (int b = 0; b < B; ++b) {
        for (int h = 0; h < H; ++h) {
            for (int i = 0; i < Lq; ++i) {
                const size_t qi = (((size_t)b * Lq + i) * H + h) * D;
                std::vector<double> s(Lk), p(Lk), dp(Lk);
                double mx = -INFINITY;
                for (int j = 0; j < Lk; ++j) {
                    const size_t kj = (((size_t)b * Lk + j) * H + h) * D;
                    double d = 0.0;
                    for (int e = 0; e < D; ++e) d += f(q[qi + e]) * f(k[kj + e]);
                    s[j] = d * scale;
                    mx = std::max(mx, s[j]);
                }
                double sum = 0.0;
                for (int j = 0; j < Lk; ++j) sum += std::exp(s[j] - mx);
                lse_ref[((size_t)b * H + h) * Lq + i] = mx + std::log(sum);
                for (int j = 0; j < Lk; ++j) p[j] = std::exp(s[j] - mx) / sum;
                for (int e = 0; e < D; ++e) {
                    double a = 0.0;
                    for (int j = 0; j < Lk; ++j) a += p[j] * f(v[(((size_t)b * Lk + j) * H + h) * D + e]);
                    o_ref[qi + e] = a;
                }
                double delta = 0.0;
                for (int e = 0; e < D; ++e) delta += dof[qi + e] * o_ref[qi + e];
                for (int j = 0; j < Lk; ++j) {
                    const size_t kj = (((size_t)b * Lk + j) * H + h) * D;
                    double d = 0.0;
                    for (int e = 0; e < D; ++e) d += dof[qi + e] * f(v[kj + e]);
                    const double ds = p[j] * (d - delta);
                    for (int e = 0; e < D; ++e) {
                        dq_ref[qi + e] += scale * ds * f(k[kj + e]);
                        dk_ref[kj + e] += scale * ds * f(q[qi + e]);
                        dv_ref[kj + e] += p[j] * dof[qi + e];
                    }
                }
            }
        }
    }

    // Forward.
    std::vector<bf16_t> out(q.size(), 0);
    std::vector<float> outf(q.size(), NAN);
    std::vector<float> lse((size_t)B * H * Lq, 0.f);
    const float sl2 = (float)(scale * 1.4426950408889634);
    const unsigned rows = c.general ? ATT_BQ : TC_ROWS;
    const dim3 block{c.general ? (unsigned)ATT_BQ : (unsigned)TC_THREADS, 1, 1};
    const dim3 gq{(unsigned)((Lq + rows - 1) / rows), (unsigned)(B * H), 1};
    const dim3 gk{(unsigned)((Lk + rows - 1) / rows), (unsigned)(B * H), 1};
    auto widen = [](const std::vector<bf16_t>& x) {
        std::vector<float> y(x.size());
        for (size_t i = 0; i < x.size(); ++i) y[i] = emu::bf16(x[i]);
        return y;
    };
    const std::vector<float> qf = widen(q), kf = widen(k), vf = widen(v);
    const bool wide = D > ATT_MAXD;
    if (c.general) {
        emu::launch(gq, block, [&] {
            (wide ? flash_attn_fwd_wide : flash_attn_fwd)(qf.data(), DT_F32, kf.data(), DT_F32, vf.data(), DT_F32,
                                                          outf.data(), DT_F32, lse.data(), Lq, Lk, H, D,
                                                          (float)scale);
        });
    } else {
        emu::launch(gq, block, [&] {
            if (D == 64)
                flash_tc_fwd_d64(q.data(), k.data(), v.data(), out.data(), DT_BF16, lse.data(), Lq, Lk, H, sl2);
            else
                flash_tc_fwd_d128(q.data(), k.data(), v.data(), out.data(), DT_BF16, lse.data(), Lq, Lk, H, sl2);
        });
        outf = widen(out);
    }

    // Backward: delta from the kernel's output (as attn_bwd_delta does on the device).
    std::vector<float> delta((size_t)B * H * Lq);
    for (int b = 0; b < B; ++b)
        for (int h = 0; h < H; ++h)
            for (int i = 0; i < Lq; ++i) {
                const size_t qi = (((size_t)b * Lq + i) * H + h) * D;
                double s = 0.0;
                for (int e = 0; e < D; ++e) s += (double)dof[qi + e] * outf[qi + e];
                delta[((size_t)b * H + h) * Lq + i] = (float)s;
            }
    const void* dptr = c.dout_dt == DT_BF16 ? (const void*)dob.data() : (const void*)dof.data();
    std::vector<float> dq(q.size(), NAN), dk(k.size(), NAN), dv(v.size(), NAN);
    if (c.general) {
        emu::launch(gq, block, [&] {
            (wide ? flash_attn_bwd_dq_wide : flash_attn_bwd_dq)(qf.data(), DT_F32, kf.data(), DT_F32, vf.data(),
                                                                DT_F32, dptr, c.dout_dt, lse.data(), delta.data(),
                                                                dq.data(), Lq, Lk, H, D, (float)scale);
        });
        emu::launch(gk, block, [&] {
            (wide ? flash_attn_bwd_dkdv_wide : flash_attn_bwd_dkdv)(qf.data(), DT_F32, kf.data(), DT_F32, vf.data(),
                                                                    DT_F32, dptr, c.dout_dt, lse.data(),
                                                                    delta.data(), dk.data(), dv.data(), Lq, Lk, H,
                                                                    D, (float)scale);
        });
    } else {
    emu::launch(gq, block, [&] {
        if (D == 64)
            flash_tc_bwd_dq_d64(q.data(), k.data(), v.data(), dptr, c.dout_dt, lse.data(), delta.data(), dq.data(),
                                Lq, Lk, H, (float)scale, sl2);
        else
            flash_tc_bwd_dq_d128(q.data(), k.data(), v.data(), dptr, c.dout_dt, lse.data(), delta.data(), dq.data(),
                                 Lq, Lk, H, (float)scale, sl2);
    });
    emu::launch(gk, block, [&] {
        if (D == 64)
            flash_tc_bwd_dkdv_d64(q.data(), k.data(), v.data(), dptr, c.dout_dt, lse.data(), delta.data(), dk.data(),
                                  dv.data(), Lq, Lk, H, (float)scale, sl2);
        else
            flash_tc_bwd_dkdv_d128(q.data(), k.data(), v.data(), dptr, c.dout_dt, lse.data(), delta.data(),
                                   dk.data(), dv.data(), Lq, Lk, H, (float)scale, sl2);
    });
    }

    const double eo = rel_err(outf, o_ref), el = rel_err(lse, lse_ref), eq = rel_err(dq, dq_ref),
                 ek = rel_err(dk, dk_ref), ev = rel_err(dv, dv_ref);
    const double tol = c.general ? TOL_F32 : TOL_TC;
    const bool ok = eo <= tol && el <= tol && eq <= tol && ek <= tol && ev <= tol;
    std::printf("%s B=%d Lq=%d Lk=%d H=%d D=%d dO=%s: out %.2e lse %.2e dq %.2e dk %.2e dv %.2e %s\n",
                c.general ? (wide ? "general-wide f32" : "general f32") : "tensor-core bf16", B, Lq, Lk, H, D,
                c.dout_dt == DT_BF16 ? "bf16" : "f32", eo, el, eq, ek, ev, ok ? "ok" : "FAIL");
    return ok;
}

}  // namespace

int main() {
    std::mt19937 rng(7);
    // Ragged lengths (not multiples of the 64 / 32 / 16 tiles), several heads and batches, both head dims,
    // both dO dtypes, one query row only, more queries than keys and the reverse.
    const Case cases[] = {
        {1, 70, 45, 2, 64, DT_F32, false},  {2, 33, 130, 1, 128, DT_BF16, false}, {1, 1, 77, 1, 64, DT_BF16, false},
        {1, 130, 9, 1, 128, DT_F32, false}, {1, 64, 64, 2, 64, DT_BF16, false},  {1, 70, 45, 2, 40, DT_F32, true},
        {1, 37, 50, 1, 384, DT_F32, true},
    };
    int failed = 0;
    for (const Case& c : cases) failed += run(c, rng) ? 0 : 1;
    if (failed) {
        std::printf("%d case(s) out of tolerance\n", failed);
        return 1;
    }
    std::printf("all cases within tolerance\n");
    return 0;
}
