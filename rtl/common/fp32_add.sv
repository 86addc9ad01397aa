// SPDX-License-Identifier: Apache-2.0
// fp32_add: IEEE-754 binary32 addition, round to nearest even, bit for bit what numpy's
// np.add(a, b, dtype=np.float32) gives (simulator/numerics.py accumulate_block):
//
//   subnormal inputs and outputs are kept (no flush to zero, no denormals-are-zero)
//   a result too large for fp32 rounds to +-inf
//   any NaN input, or inf + -inf: NaN, always the canonical quiet NaN 32'h7FC00000
//   an exact zero sum of operands of opposite signs, x + (-x), is +0; (-0) + (-0) = -0
//
// Datapath: the operand of larger magnitude is x, the other y; y's 24-bit significand is
// aligned to x's with 3 extra bits (guard, round, sticky), every bit shifted past them
// jammed into the sticky bit; then one adder / subtractor, a 1-bit right shift after a
// carry or a left normalization (bounded so the exponent stays >= 1: a subnormal result)
// after a cancellation, and one nearest-even rounding. A cancellation of more than one
// bit only happens when the exponents differ by at most 1, so no sticky bit was lost then.
//
// Timing: purely combinational (no clock); sum_o follows a_i and b_i.
module fp32_add (
    input  logic [31:0] a_i,
    input  logic [31:0] b_i,
    output logic [31:0] sum_o
);
  localparam logic [31:0] QNAN = 32'h7FC0_0000;

  function automatic logic [31:0] add(input logic [31:0] a, input logic [31:0] b);
    logic        a_nan, b_nan, a_inf, b_inf, sub, round_up;
    logic [31:0] x, y;
    logic [7:0]  ex, ey, d;
    logic [23:0] mx, my;
    logic [26:0] xa, ya, ya_full, lost_mask, diff, n;
    logic [27:0] sum_w;
    logic [4:0]  lz, lsh;
    logic [9:0]  e, field;
    logic [24:0] r;
    logic [22:0] frac;
    // operand classes
    a_nan = (a[30:23] == 8'hFF) && (a[22:0] != 23'd0);
    b_nan = (b[30:23] == 8'hFF) && (b[22:0] != 23'd0);
    a_inf = (a[30:23] == 8'hFF) && (a[22:0] == 23'd0);
    b_inf = (b[30:23] == 8'hFF) && (b[22:0] == 23'd0);
    // x: the operand of larger magnitude (a on a tie), y: the other one
    x = (b[30:0] > a[30:0]) ? b : a;
    y = (b[30:0] > a[30:0]) ? a : b;
    // exponents (a subnormal's is 1, its hidden bit 0) and 24-bit significands
    ex = (x[30:23] == 8'd0) ? 8'd1 : x[30:23];
    ey = (y[30:23] == 8'd0) ? 8'd1 : y[30:23];
    mx = {x[30:23] != 8'd0, x[22:0]};
    my = {y[30:23] != 8'd0, y[22:0]};
    d  = ex - ey;                              // >= 0 as |x| >= |y|
    // y aligned to x: {significand, guard, round, sticky}, shifted-out bits jammed into
    // bit 0
    xa        = {mx, 3'b000};
    ya_full   = {my, 3'b000};
    lost_mask = (d >= 8'd27) ? {27{1'b1}} : ~({27{1'b1}} << d);
    ya        = (d >= 8'd27) ? 27'd0 : ya_full >> d;
    ya[0]     = ya[0] | ((ya_full & lost_mask) != 27'd0);
    // add or subtract, normalize: n (leading one at bit 26 unless subnormal), exponent e
    sub   = x[31] ^ y[31];
    sum_w = {1'b0, xa} + {1'b0, ya};
    diff  = xa - ya;                           // >= 0 as |x| >= |y|
    lz    = 5'd27;                             // leading zeros of diff (27: diff == 0)
    for (int i = 0; i < 27; i++) begin
      if (diff[i]) lz = 5'(26 - i);
    end
    // shift left by lz, but not below exponent 1 (then the result is subnormal)
    lsh = ({3'b0, lz} < ex - 8'd1) ? lz : 5'(ex - 8'd1);
    if (!sub) begin
      if (sum_w[27]) begin                     // carry: shift right 1, keep the sticky bit
        n = {sum_w[27:2], sum_w[1] | sum_w[0]};
        e = {2'b0, ex} + 10'd1;
      end else begin
        n = sum_w[26:0];
        e = {2'b0, ex};
      end
    end else begin
      n = diff << lsh;
      e = {2'b0, ex} - {5'd0, lsh};
    end
    // round to nearest even on n[2:0]; a carry out of the significand bumps the exponent;
    // a significand without its hidden bit is a subnormal (exponent field 0)
    round_up = n[2] & (n[1] | n[0] | n[3]);
    r        = {1'b0, n[26:3]} + {24'd0, round_up};
    if (r[24]) begin
      field = e + 10'd1;
      frac  = r[23:1];
    end else begin
      field = r[23] ? e : 10'd0;
      frac  = r[22:0];
    end
    // the result: specials first; an exact zero from a subtraction is +0
    if (a_nan || b_nan || (a_inf && b_inf && (a[31] != b[31]))) return QNAN;
    if (a_inf) return a;
    if (b_inf) return b;
    if (sub && (diff == 27'd0)) return 32'h0000_0000;
    if (field >= 10'd255) return {x[31], 8'hFF, 23'd0};
    return {x[31], field[7:0], frac};
  endfunction

  assign sum_o = add(a_i, b_i);
endmodule
