// Wan 3D rotary position embedding (WAN_SPEC §1.4 / §8), forward (sign = +1) and backward (sign = -1, the
// rotation by the negated angle).
//
// Per head of width hd the hd/2 interleaved channel pairs (x[2j], x[2j+1]) split into three frequency groups:
// pt = (hd - 2*dh)/2 frame pairs, then ph = pw = dh/2 height and width pairs, dh = 2*floor(hd/6)
// (hd = 128 -> 22/21/21 pairs). Pair j of group a rotates by pos_a * theta^(-2jj/width_a); the angles are
// tabulated on the host in f64 and rounded to f32:
//   tab = [cos_t (gt*pt) | sin_t | cos_h (gh*ph) | sin_h | cos_w (gw*pw) | sin_w], row pos, column jj.
// Token l of the post-patch grid [gt, gh, gw] has positions (l / (gh*gw), (l / gw) % gh, l % gw).
//   y[2j]   = x[2j] * cos - x[2j+1] * sin * sign
//   y[2j+1] = x[2j] * sin * sign + x[2j+1] * cos
// Layout: x, y contiguous [B, L, H, hd]. Launch: grid-stride over B*L*H*hd/2 pairs, 256 threads.

extern "C" __global__ void rope3d(const void* x, int xdt, void* y, int ydt, const float* tab, i64 L, i64 H, i64 hd,
                                  i64 gt, i64 gh, i64 gw, i64 pt, i64 ph, i64 pw, float sign, i64 npairs) {
    i64 half = hd / 2;
    const float* cos_t = tab;
    const float* sin_t = cos_t + gt * pt;
    const float* cos_h = sin_t + gt * pt;
    const float* sin_h = cos_h + gh * ph;
    const float* cos_w = sin_h + gh * ph;
    const float* sin_w = cos_w + gw * pw;
    GRID_STRIDE(p, npairs) {
        i64 j = p % half;
        i64 l = (p / (half * H)) % L;
        float c, s;
        if (j < pt) {
            i64 pos = l / (gh * gw);
            c = cos_t[pos * pt + j];
            s = sin_t[pos * pt + j];
        } else if (j < pt + ph) {
            i64 pos = (l / gw) % gh, jj = j - pt;
            c = cos_h[pos * ph + jj];
            s = sin_h[pos * ph + jj];
        } else {
            i64 pos = l % gw, jj = j - pt - ph;
            c = cos_w[pos * pw + jj];
            s = sin_w[pos * pw + jj];
        }
        s *= sign;
        float a = ld(x, xdt, 2 * p), b = ld(x, xdt, 2 * p + 1);
        st(y, ydt, 2 * p, a * c - b * s);
        st(y, ydt, 2 * p + 1, a * s + b * c);
    }
}
