// 3-D convolution gather kernels (im2col / col2im) for conv3d = gather + cuBLAS GEMM (the DiT patch embedding
// and the VAE's causal convolutions).
//
// Geometry `ConvGeo` mirrors `ConvGeo` in kernels/src/cuda/launch.rs (#[repr(C)], 17 i64): input
// x [B, C, T, H, W] (contiguous), kernel (kt, kh, kw), stride (st, sh, sw), leading zero padding (pt, ph, pw),
// output (To, Ho, Wo). Output position p = ((b*To + to)*Ho + ho)*Wo + wo (P = B*To*Ho*Wo rows); patch column
// col = ((c*kt + dt)*kh + dh)*kw + dw (CK = C*kt*kh*kw columns), the order of a [Cout, C, kt, kh, kw] weight
// flattened to [Cout, CK], so the forward is out[P, Cout] = cols[P, CK] * W^T.
// `col2im3d` is the adjoint as a gather (each input element sums the patch entries that read it), so it needs
// no atomics and is deterministic.
// `im2col3d` fills the rows [p0, p0 + n / CK) of the column matrix (row p0 at the start of `cols`), so the host
// can gather and multiply a bounded number of rows at a time.
// Launch: grid-stride, 256 threads (im2col over its rows times CK, col2im over B*C*T*H*W).

struct ConvGeo {
    i64 B, C, T, H, W;
    i64 kt, kh, kw;
    i64 st, sh, sw;
    i64 pt, ph, pw;
    i64 To, Ho, Wo;
};

extern "C" __global__ void im2col3d(const void* x, int xdt, void* cols, int cdt, ConvGeo g, i64 p0, i64 n) {
    i64 taps = g.kt * g.kh * g.kw;
    i64 ck = g.C * taps;
    GRID_STRIDE(idx, n) {
        i64 p = p0 + idx / ck, col = idx % ck;
        i64 c = col / taps, k = col % taps;
        i64 dt = k / (g.kh * g.kw), dh = (k / g.kw) % g.kh, dw = k % g.kw;
        i64 wo = p % g.Wo, ho = (p / g.Wo) % g.Ho, to = (p / (g.Wo * g.Ho)) % g.To, b = p / (g.Wo * g.Ho * g.To);
        i64 t = to * g.st + dt - g.pt, h = ho * g.sh + dh - g.ph, w = wo * g.sw + dw - g.pw;
        float v = 0.f;
        if (t >= 0 && t < g.T && h >= 0 && h < g.H && w >= 0 && w < g.W) {
            v = ld(x, xdt, (((b * g.C + c) * g.T + t) * g.H + h) * g.W + w);
        }
        st(cols, cdt, idx, v);
    }
}

// dx[b, c, t, h, w] = sum of dcols[p, col] over the (p, col) pairs that im2col3d read x[b, c, t, h, w] into.
extern "C" __global__ void col2im3d(const void* dcols, int ddt, float* dx, ConvGeo g, i64 n) {
    i64 taps = g.kt * g.kh * g.kw;
    i64 ck = g.C * taps;
    GRID_STRIDE(idx, n) {
        i64 w = idx % g.W, h = (idx / g.W) % g.H, t = (idx / (g.W * g.H)) % g.T;
        i64 c = (idx / (g.W * g.H * g.T)) % g.C, b = idx / (g.W * g.H * g.T * g.C);
        float acc = 0.f;
        for (i64 dt = 0; dt < g.kt; ++dt) {
            i64 tt = t + g.pt - dt;
            if (tt < 0 || tt % g.st != 0 || tt / g.st >= g.To) continue;
            i64 to = tt / g.st;
            for (i64 dh = 0; dh < g.kh; ++dh) {
                i64 hh = h + g.ph - dh;
                if (hh < 0 || hh % g.sh != 0 || hh / g.sh >= g.Ho) continue;
                i64 ho = hh / g.sh;
                for (i64 dw = 0; dw < g.kw; ++dw) {
                    i64 ww = w + g.pw - dw;
                    if (ww < 0 || ww % g.sw != 0 || ww / g.sw >= g.Wo) continue;
                    i64 wo = ww / g.sw;
                    i64 p = ((b * g.To + to) * g.Ho + ho) * g.Wo + wo;
                    i64 col = ((c * g.kt + dt) * g.kh + dh) * g.kw + dw;
                    acc += ld(dcols, ddt, p * ck + col);
                }
            }
        }
        dx[idx] = acc;
    }
}
