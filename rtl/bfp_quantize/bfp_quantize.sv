// SPDX-License-Identifier: Apache-2.0
// bfp_quantize: one block of BLOCK fp32 values -> one BFP block (shared exponent and
// BLOCK sign/mantissa codes), round to nearest even, bit for bit the golden model
// simulator/numerics.py quantize_reference (docs/numerics.md, "Quantization").
//
//   e    = clamp(floor(log2(max |x_i| over finite x_i)), EMIN, EMAX); all-zero block: EMIN
//   m_i  = min(rint(|x_i| * 2**(MANT-1-e)), 2**MANT - 1)        (ties to even, saturate)
//   s_i  = sign(x_i) & (m_i != 0)                                (-0.0 and flushed: +0)
//   a NaN or +-inf anywhere: exponent all ones, every code 0
//
// Timing: 2-stage pipeline, latency 2 cycles (a block accepted at clock edge t is on
// out_*_o, out_valid_o high, after edge t+2), throughput 1 block per cycle. Stage 1 finds
// the shared exponent, stage 2 shifts and rounds. out_ready_i low stalls the whole
// pipeline; the ready path is combinational (no skid buffer).
//
// fp32 subnormals are exact values (frac * 2**-149); their floor(log2) is <= -127 <= EMIN
// because BIAS <= 127 (checked below), so their fp32 exponent field 0 can stand for it in
// the max. Stochastic rounding (lowbias32 hash of the tensor-wide element index) is not
// implemented: it needs the element's index in the whole tensor, which a block kernel
// does not see.
//
// Layout: in_data_i[32*i +: 32] is element i (IEEE binary32 bits);
// out_codes_o[CODE_W*i +: CODE_W] is element i's code {s_i, m_i}; out_exp_o = e + BIAS.
module bfp_quantize #(
    parameter int BLOCK    = 16,   // elements per block
    parameter int MANT     = 3,    // M: mantissa bits, no hidden bit
    parameter int EXP_BITS = 8,    // E: stored shared-exponent bits
    parameter int BIAS     = 127   // stored exponent = e + BIAS
) (
    input  logic                       clk_i,
    input  logic                       rst_ni,       // synchronous, active low
    input  logic                       in_valid_i,
    output logic                       in_ready_o,
    input  logic [BLOCK*32-1:0]        in_data_i,
    output logic                       out_valid_o,
    input  logic                       out_ready_i,
    output logic [EXP_BITS-1:0]        out_exp_o,
    output logic [BLOCK*(MANT+1)-1:0]  out_codes_o
);
  // derived parameters
  localparam int CODE_W = MANT + 1;                       // element code bits
  localparam int EMIN   = -BIAS;                          // stored 0
  localparam int EMAX   = (1 << EXP_BITS) - 2 - BIAS;     // all ones is reserved for NaN
  localparam int MAXM   = (1 << MANT) - 1;                // saturation value
  localparam int WIDE_W = 24 + MANT + 1;                  // significand shifted left

  initial begin
    if (BIAS > 127) $fatal(1, "bfp_quantize: BIAS > 127 needs subnormal exponents");
    if (MANT < 1 || MANT > 22) $fatal(1, "bfp_quantize: MANT out of range");
  end

  // ---- stage 1: shared exponent ------------------------------------------------------
  logic       nonfinite_c, any_nz_c;
  logic [7:0] fmax_c;
  int         e_c;

  always_comb begin
    nonfinite_c = 1'b0;
    any_nz_c    = 1'b0;
    fmax_c      = 8'd0;
    for (int i = 0; i < BLOCK; i++) begin
      if (in_data_i[32*i+23 +: 8] == 8'hFF) begin
        nonfinite_c = 1'b1;
      end else if (in_data_i[32*i +: 31] != 31'd0) begin  // zero (either sign) is skipped
        any_nz_c = 1'b1;
        if (in_data_i[32*i+23 +: 8] > fmax_c) fmax_c = in_data_i[32*i+23 +: 8];
      end
    end
    e_c = any_nz_c ? int'(fmax_c) - 127 : EMIN;
    if (e_c < EMIN) e_c = EMIN;
    if (e_c > EMAX) e_c = EMAX;
  end

  logic               s1_valid;
  logic [BLOCK*32-1:0] s1_data;
  logic               s1_nonfinite;
  int                 s1_e;

  // ---- stage 2: scale, round to nearest even, saturate --------------------------------
  // one element: its fp32 bits x, the block's unbiased exponent e -> code {s, m}
  function automatic logic [CODE_W-1:0] quantize_element(input logic [31:0] x, input int e);
    logic [7:0]        f;
    logic [23:0]       sig;
    int                rsh, lsh;
    logic [WIDE_W-1:0] wide;
    logic [31:0]       q, sticky_mask;
    logic              guard, sticky;
    logic [MANT-1:0]   m;
    f   = x[30:23];
    sig = {f != 8'd0, x[22:0]};                  // |x| = sig * 2**(max(f,1) - 150), exactly
    // a = |x| * 2**(MANT - 1 - e) = sig * 2**-rsh
    rsh = 151 - MANT - ((f == 8'd0) ? 1 : int'(f)) + e;
    if (rsh <= 0) begin
      // already an integer; a shift past MANT+1 saturates anyway, so cap it
      lsh  = (-rsh > MANT + 1) ? MANT + 1 : -rsh;
      wide = WIDE_W'(sig) << lsh;
      m    = (wide > WIDE_W'(MAXM)) ? MANT'(MAXM) : wide[MANT-1:0];
    end else begin
      if (rsh > 26) rsh = 26;                    // a < 0.25 from 26 on: rounds to 0
      q           = 32'(sig) >> rsh;
      guard       = ((32'(sig) >> (rsh - 1)) & 32'd1) != 32'd0;
      sticky_mask = (32'd1 << (rsh - 1)) - 32'd1;
      sticky      = (32'(sig) & sticky_mask) != 32'd0;
      q           = q + 32'(guard & (sticky | q[0]));   // nearest, ties to even
      m           = (q > 32'(MAXM)) ? MANT'(MAXM) : q[MANT-1:0];   // a carry saturates
    end
    return {x[31] & (m != '0), m};               // -0.0 and flushed negatives: +0
  endfunction

  logic [BLOCK*CODE_W-1:0] codes_c;
  logic [EXP_BITS-1:0]     exp_c;

  for (genvar i = 0; i < BLOCK; i++) begin : g_elem
    assign codes_c[CODE_W*i +: CODE_W] =
        s1_nonfinite ? CODE_W'(0) : quantize_element(s1_data[32*i +: 32], s1_e);
  end
  assign exp_c = s1_nonfinite ? {EXP_BITS{1'b1}} : EXP_BITS'(s1_e + BIAS);

  // ---- handshake: a stage loads when it is empty or its content moves on ---------------
  logic s2_ready;
  assign s2_ready   = !out_valid_o || out_ready_i;
  assign in_ready_o = !s1_valid || s2_ready;

  always_ff @(posedge clk_i) begin
    if (!rst_ni) begin
      s1_valid    <= 1'b0;
      out_valid_o <= 1'b0;
    end else begin
      if (s2_ready) begin
        out_valid_o <= s1_valid;
        if (s1_valid) begin
          out_exp_o   <= exp_c;
          out_codes_o <= codes_c;
        end
      end
      if (in_ready_o) begin
        s1_valid <= in_valid_i;
        if (in_valid_i) begin
          s1_data      <= in_data_i;
          s1_nonfinite <= nonfinite_c;
          s1_e         <= e_c;
        end
      end
    end
  end
endmodule
