// SPDX-License-Identifier: Apache-2.0
// bfp_quantize: one block of BLOCK fp32 values -> one BFP block (shared exponent and
// BLOCK sign/mantissa codes), bit for bit the golden model simulator/numerics.py
// quantize_reference (docs/numerics.md, "Quantization"), nearest-even or stochastic:
//
//   e    = clamp(floor(log2(max |x_i| over finite x_i)), EMIN, EMAX); all-zero block: EMIN
//   a_i  = |x_i| * 2**(MANT-1-e)
//   m_i  = min(rint(a_i), 2**MANT - 1)                         sr_i = 0: ties to even
//   m_i  = min((floor(a_i * 2**16) + r_k) >> 16, 2**MANT - 1)  sr_i = 1: stochastic
//   s_i  = sign(x_i) & (m_i != 0)                              (-0.0 and flushed: +0)
//   a NaN or +-inf anywhere: exponent all ones, every code 0
//
// Stochastic rounding: r_k = lowbias32((k + seed_i * 0x9E3779B9) mod 2**32) >> 16, where
// k = index_i + i is element i's row-major index in the whole (padded) tensor; index_i,
// seed_i and sr_i are sampled with the block. With sr_i = 0, seed_i and index_i are
// don't-cares; an unconnected sr_i (z/x in a 4-state simulator, 0 in a 2-state one)
// selects nearest even.
//
// Timing: a global-stall pipeline of LATENCY = $clog2(BLOCK) + 2 register stages
// (simulator/timing.py bfp_convert_depth): $clog2(BLOCK) levels of a comparator tree
// that finds the largest fp32 exponent field (one register per level), then a stage
// that shifts every element to 16 fraction bits below the code's LSB, then a stage that
// rounds and saturates. A block accepted at clock edge t is on out_*_o, out_valid_o high,
// after edge t+LATENCY; throughput 1 block per cycle. Every stage advances together when
// the output register can move (!out_valid_o || out_ready_i), which is also in_ready_o
// (combinational, no skid buffer); valid bits travel with the data. The lowbias32 hash
// (two constant 32x32 multiplies) runs beside the tree: first half in the input stage,
// second half after the first register, its 16-bit result then delayed to the round stage.
//
// fp32 subnormals are exact values (frac * 2**-149); their floor(log2) is <= -127 <= EMIN
// because BIAS <= 127 (checked below), so their fp32 exponent field 0 can stand for it in
// the max, and the all-zero block (max field 0) lands on EMIN by the same clamp.
//
// OCP MX minifloat elements (ELEM_EXP > 0: MXFP8 E4M3/E5M2, MXFP6, MXFP4), the golden
// model's minifloat grid (numerics.quantize_reference, docs/numerics.md "MX formats"):
//
//   e    = clamp(floor(log2(max |x_i|)) - EMAX_ELEM, EMIN, EMAX)   EMAX_ELEM from ELEM_MAXC
//   a_i  = |x_i| * 2**(SHIFT - e)        units of the smallest subnormal, SHIFT = BIAS_E-1+M_E
//   k_i  = max(floor(log2 a_i) - ELEM_MAN, 0)                        the grid step is 2**k_i
//   t_i  = a_i / 2**k_i, rounded to an integer as above (nearest even or stochastic)
//   c_i  = min((k_i << ELEM_MAN) + t_i, ELEM_MAXC)   the magnitude code: a carry out of the
//          mantissa moves to the next binade by itself, and too large a code saturates
//
// floor(log2 a_i) comes from the element's own leading one (an fp32 subnormal's too: under
// the smallest scale it can reach a normal binade of the element); the shift stage aligns
// the grid's last place at FRAC bits, so the round stage is the BFP one.
//
// Layout: in_data_i[32*i +: 32] is element i (IEEE binary32 bits);
// out_codes_o[CODE_W*i +: CODE_W] is element i's code {s_i, m_i} (a minifloat's {s, E, M});
// out_exp_o = e + BIAS.
module bfp_quantize #(
    parameter int BLOCK     = 16,   // elements per block (>= 2)
    parameter int MANT      = 3,    // M: magnitude bits of a code (BFP: mantissa, no hidden
                                    // bit; a minifloat: ELEM_EXP + ELEM_MAN)
    parameter int EXP_BITS  = 8,    // E: stored shared-exponent bits
    parameter int BIAS      = 127,  // stored exponent = e + BIAS
    parameter int ELEM_EXP  = 0,    // minifloat exponent bits; 0: BFP or integer elements
    parameter int ELEM_MAN  = 0,    // minifloat mantissa bits
    parameter int ELEM_BIAS = 0,    // minifloat exponent bias
    parameter int ELEM_MAXC = 0,    // the largest finite minifloat magnitude code
    // derived
    localparam int LEVELS  = $clog2(BLOCK),   // comparator-tree levels, one register each
    localparam int LATENCY = LEVELS + 2       // tree levels, shift, round
) (
    input  logic                       clk_i,
    input  logic                       rst_ni,       // synchronous, active low
    input  logic                       in_valid_i,
    output logic                       in_ready_o,
    input  logic [BLOCK*32-1:0]        in_data_i,
    output logic                       out_valid_o,
    input  logic                       out_ready_i,
    output logic [EXP_BITS-1:0]        out_exp_o,
    output logic [BLOCK*(MANT+1)-1:0]  out_codes_o,
    input  logic                       sr_i,         // 1: stochastic, 0: nearest even
    input  logic [31:0]                seed_i,       // stochastic seed (mod 2**32)
    input  logic [31:0]                index_i       // tensor index of element 0
);
  // derived parameters
  localparam int CODE_W = MANT + 1;                       // element code bits
  localparam int EMIN   = -BIAS;                          // stored 0
  localparam int EMAX   = (1 << EXP_BITS) - 2 - BIAS;     // all ones is reserved for NaN
  localparam int MAXM   = (1 << MANT) - 1;                // saturation value
  localparam bit MINI   = ELEM_EXP > 0;                    // minifloat elements
  localparam int EMAX_ELEM = MINI ? (ELEM_MAXC >> ELEM_MAN) - ELEM_BIAS : 0;
  localparam int SHIFT  = MINI ? ELEM_BIAS - 1 + ELEM_MAN : MANT - 1;  // x = q * 2**(e-SHIFT)
  localparam int KW     = 8;                               // grid-step field k_i
  localparam int FRAC   = 16;                             // numerics.STOCHASTIC_FRACTION_BITS
  localparam int WIDE_W = 24 + FRAC;                      // significand, FRAC bits below
  localparam int LEAVES = 1 << LEVELS;                    // tree leaves, BLOCK padded
  localparam int NODE_W = 9;                              // tree node {nonfinite, field}
  localparam logic [31:0] GOLDEN = 32'h9E37_79B9;         // seed multiplier
  localparam logic [31:0] MUL1   = 32'h7FEB_352D;         // lowbias32 constants
  localparam logic [31:0] MUL2   = 32'h846C_A68B;

  initial begin
    if (BIAS > 127) $fatal(1, "bfp_quantize: BIAS > 127 needs subnormal exponents");
    if (MANT < 1 || MANT > 22) $fatal(1, "bfp_quantize: MANT out of range");
    if (BLOCK < 2) $fatal(1, "bfp_quantize: BLOCK < 2 has no comparator tree");
    if (MINI && MANT != ELEM_EXP + ELEM_MAN)
      $fatal(1, "bfp_quantize: a minifloat code has MANT = ELEM_EXP + ELEM_MAN bits");
  end

  // ---- global stall: every stage moves when the output register can ----------------
  logic adv;
  assign adv        = !out_valid_o || out_ready_i;
  assign in_ready_o = adv;

  // valid_q[k]: stage k holds a block (1..LEVELS tree, LEVELS+1 shift, LATENCY output)
  logic [LATENCY:1] valid_q;
  assign out_valid_o = valid_q[LATENCY];

  // ---- max tree: heap-numbered nodes, node n = max(node 2n, node 2n+1) -------------
  // leaves LEAVES..2*LEAVES-1 are combinational from in_data_i (padding leaves are 0);
  // node 1 <= n < LEAVES sits at tree level LEVELS - floor(log2 n) and is a register
  logic [LEAVES*NODE_W-1:0]     leaf_c;    // leaf LEAVES+j at [NODE_W*j +: NODE_W]
  logic [(LEAVES-1)*NODE_W-1:0] node_q;    // node n at [NODE_W*(n-1) +: NODE_W]

  always_comb begin
    leaf_c = '0;
    for (int j = 0; j < BLOCK; j++) begin
      if (in_data_i[32*j+23 +: 8] == 8'hFF) leaf_c[NODE_W*j +: NODE_W] = {1'b1, 8'd0};
      else                                  leaf_c[NODE_W*j +: NODE_W] = {1'b0, in_data_i[32*j+23 +: 8]};
    end
  end

  function automatic logic [NODE_W-1:0] combine(input logic [NODE_W-1:0] l, r);
    return {l[8] | r[8], (l[7:0] > r[7:0]) ? l[7:0] : r[7:0]};
  endfunction

  // ---- lowbias32, split in two halves ----------------------------------------------
  function automatic logic [31:0] hash_head(input logic [31:0] k);   // xs16, *MUL1
    return (k ^ (k >> 16)) * MUL1;
  endfunction

  function automatic logic [FRAC-1:0] hash_tail(input logic [31:0] h); // xs15, *MUL2, xs16
    logic [31:0] t;
    t = (h ^ (h >> 15)) * MUL2;
    t = t ^ (t >> 16);
    return t[31:32-FRAC];
  endfunction

  logic [31:0]         seed_mix_c;
  logic [BLOCK*32-1:0] head_c;
  assign seed_mix_c = seed_i * GOLDEN;
  for (genvar i = 0; i < BLOCK; i++) begin : g_head
    assign head_c[32*i +: 32] = hash_head(index_i + 32'(i) + seed_mix_c);
  end

  // ---- data, flags and random bits travelling beside the tree -----------------------
  logic [BLOCK*32-1:0]   data_q [1:LEVELS];   // data_q[k]: the block at tree level k
  logic [LEVELS:1]       sr_q;
  logic [BLOCK*32-1:0]   head_q;              // level 1: first half of the hash
  logic [BLOCK*FRAC-1:0] rnd_c;               // from head_q: the 16-bit fractions r_k
  logic [BLOCK*FRAC-1:0] rnd_q [2:LEVELS+1];  // rnd_q[k]: r_k of the block at stage k

  for (genvar i = 0; i < BLOCK; i++) begin : g_tail
    assign rnd_c[FRAC*i +: FRAC] = hash_tail(head_q[32*i +: 32]);
  end

  always_ff @(posedge clk_i) begin
    if (!rst_ni) begin
      valid_q <= '0;
    end else if (adv) begin
      valid_q[1] <= in_valid_i;
      for (int k = 2; k <= LATENCY; k++) valid_q[k] <= valid_q[k-1];
    end
  end

  always_ff @(posedge clk_i) begin
    if (adv) begin
      for (int n = 1; n < LEAVES; n++) begin
        if (2 * n >= LEAVES)
          node_q[NODE_W*(n-1) +: NODE_W] <= combine(leaf_c[NODE_W*(2*n-LEAVES) +: NODE_W],
                                                    leaf_c[NODE_W*(2*n+1-LEAVES) +: NODE_W]);
        else
          node_q[NODE_W*(n-1) +: NODE_W] <= combine(node_q[NODE_W*(2*n-1) +: NODE_W],
                                                    node_q[NODE_W*(2*n) +: NODE_W]);
      end
      data_q[1] <= in_data_i;
      for (int k = 2; k <= LEVELS; k++) data_q[k] <= data_q[k-1];
      sr_q[1] <= sr_i;
      for (int k = 2; k <= LEVELS; k++) sr_q[k] <= sr_q[k-1];
      head_q   <= head_c;
      rnd_q[2] <= rnd_c;
      for (int k = 3; k <= LEVELS + 1; k++) rnd_q[k] <= rnd_q[k-1];
    end
  end

  // ---- shift stage: e from the tree's root, each |x_i| to FRAC fraction bits ------------
  // element fields after the shift: {sign, saturated, grid step k (minifloat), floor(t)
  // (MANT bits), FRAC fraction bits of t, sticky (any bit below those)}; BFP: t = a, k = 0
  localparam int ELEM_W = 1 + 1 + KW + MANT + FRAC + 1;

  // floor(log2 |x|) + 127 from the leading one (an fp32 subnormal's too); x = 0: -200
  function automatic int lead_exponent(input logic [31:0] x);
    int r;
    r = -200;
    if (x[30:23] != 8'd0) r = int'(x[30:23]);
    else for (int b = 0; b <= 22; b++) if (x[b]) r = b - 22;
    return r;
  endfunction

  function automatic logic [ELEM_W-1:0] shift_element(input logic [31:0] x,
                                                      input logic [8:0] e_plus_127);
    logic [7:0]        f;
    logic [23:0]       sig;
    int                rsh, lead, k;
    logic [WIDE_W-1:0] wide, lost;
    logic              sat;
    f   = x[30:23];
    sig = {f != 8'd0, x[22:0]};                  // |x| = sig * 2**(max(f,1) - 150), exactly
    // minifloat: the binade of a = |x| * 2**(SHIFT - e) fixes the grid step 2**k
    k = 0;
    if (MINI) begin
      lead = lead_exponent(x) - 127 + SHIFT - (int'(e_plus_127) - 127);  // floor(log2 a)
      if (lead > ELEM_MAN) k = lead - ELEM_MAN;
    end
    // t * 2**FRAC = sig * 2**(FRAC - rsh), rsh = 150 - SHIFT - max(f,1) + e + k
    rsh = 23 - SHIFT + int'(e_plus_127) - ((f == 8'd0) ? 1 : int'(f)) + k;
    if (rsh <= 0) begin
      // a >= 2**23 >= 2**MANT (only normals get here): saturates
      wide = '0;
      lost = '0;
      sat  = 1'b1;
    end else begin
      if (rsh > WIDE_W) rsh = WIDE_W;            // everything shifted out
      wide = {sig, {FRAC{1'b0}}} >> rsh;
      lost = {sig, {FRAC{1'b0}}} & ~({WIDE_W{1'b1}} << rsh);
      sat  = wide[WIDE_W-1:FRAC+MANT] != '0;
    end
    return {x[31], sat, KW'(k), wide[FRAC+MANT-1:0], lost != '0};
  endfunction

  logic [8:0]              root_c;       // {nonfinite, largest exponent field}
  logic [8:0]              e127_c;       // e + 127 (clamped), 0..254
  logic [EXP_BITS-1:0]     exp_c;
  logic [BLOCK*ELEM_W-1:0] elems_c;

  // the unbiased shared exponent of the largest exponent field, clamped
  function automatic int shared_exponent(input logic [7:0] fmax);
    int e;
    e = int'(fmax) - 127 - EMAX_ELEM;
    if (e < EMIN) e = EMIN;
    if (e > EMAX) e = EMAX;
    return e;
  endfunction

  assign root_c = node_q[NODE_W-1:0];
  assign e127_c = 9'(shared_exponent(root_c[7:0]) + 127);
  assign exp_c  = root_c[8] ? {EXP_BITS{1'b1}} : EXP_BITS'(shared_exponent(root_c[7:0]) + BIAS);
  for (genvar i = 0; i < BLOCK; i++) begin : g_shift
    assign elems_c[ELEM_W*i +: ELEM_W] = shift_element(data_q[LEVELS][32*i +: 32], e127_c);
  end

  logic                    shift_nf_q, shift_sr_q;
  logic [EXP_BITS-1:0]     shift_exp_q;
  logic [BLOCK*ELEM_W-1:0] shift_elems_q;

  always_ff @(posedge clk_i) begin
    if (adv) begin
      shift_nf_q    <= root_c[8];
      shift_sr_q    <= sr_q[LEVELS];
      shift_exp_q   <= exp_c;
      shift_elems_q <= elems_c;
    end
  end

  // ---- round stage: nearest even or + r_k, then saturate ------------------------------
  function automatic logic [CODE_W-1:0] round_element(input logic [ELEM_W-1:0] el,
                                                      input logic [FRAC-1:0] r,
                                                      input logic stochastic);
    logic            sign, sat, sticky, up;
    logic [KW-1:0]   k;
    logic [MANT-1:0] ip;
    logic [FRAC-1:0] fp;
    logic [FRAC:0]   fsum;
    logic [MANT:0]   q;
    logic [MANT-1:0] m;
    int              code;
    {sign, sat, k, ip, fp, sticky} = el;
    fsum = {1'b0, fp} + {1'b0, r};
    if (stochastic) up = fsum[FRAC];                                       // carry out
    else            up = fp[FRAC-1] & ((fp[FRAC-2:0] != '0) | sticky | ip[0]);  // RNE
    q = {1'b0, ip} + (MANT+1)'(up);
    if (MINI) begin  // a carry into the next binade is the next code; past the top: saturate
      code = (int'(k) << ELEM_MAN) + int'(q);
      m = (code > ELEM_MAXC) ? MANT'(ELEM_MAXC) : MANT'(code);
    end else begin
      m = (sat || q[MANT]) ? MANT'(MAXM) : q[MANT-1:0];
    end
    return {sign & (m != '0), m};
  endfunction

  // shift_sr_q is tested with if, so an x/z sr_i (unconnected port) rounds to nearest even
  function automatic logic [CODE_W-1:0] code_of(input logic nonfinite, stochastic,
                                                input logic [ELEM_W-1:0] el,
                                                input logic [FRAC-1:0] r);
    if (nonfinite)  return '0;
    if (stochastic) return round_element(el, r, 1'b1);
    return round_element(el, '0, 1'b0);
  endfunction

  logic [BLOCK*CODE_W-1:0] codes_c;
  for (genvar i = 0; i < BLOCK; i++) begin : g_round
    assign codes_c[CODE_W*i +: CODE_W] = code_of(shift_nf_q, shift_sr_q,
                                                 shift_elems_q[ELEM_W*i +: ELEM_W],
                                                 rnd_q[LEVELS+1][FRAC*i +: FRAC]);
  end

  always_ff @(posedge clk_i) begin
    if (adv && valid_q[LEVELS+1]) begin
      out_exp_o   <= shift_exp_q;
      out_codes_o <= codes_c;
    end
  end
endmodule
