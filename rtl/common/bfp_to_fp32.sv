// SPDX-License-Identifier: Apache-2.0
// bfp_to_fp32: the fp32 value of one BFP block product, bit for bit the golden model's
// simulator/numerics.py block_product(partial, scale):
//
//   value = fp32(dot * 2**(esum - 2*(MANT-1)))      round to nearest even
//   value = NaN (32'h7FC00000) when nan_i (a non-finite block; dot and esum are ignored)
//
// dot is the exact integer block dot product and esum the unbiased exponent sum that
// bfp_dot produces. The value is exact unless it falls into the subnormal range (rounded
// to nearest even there, possibly to +-0, keeping dot's sign) or past the largest finite
// fp32 (+-inf). dot == 0 gives +0. Works for any DOT_W <= 25 and ESUM_W <= 12.
//
// Datapath: |dot|'s leading one gives the unbiased result exponent E; the result's ulp
// is 2**(max(E, -126) - 23); |dot| is shifted to that ulp (left: exact; right: nearest
// even), and the encoding is ((max(E, -126) + 126) << 23) + significand, so a rounding
// carry moves into the exponent field by itself (subnormal -> normal, 2**24 -> next
// exponent) and anything from the all-ones field on is inf.
//
// Timing: purely combinational (no clock); value_o follows the inputs.
module bfp_to_fp32 #(
    parameter int MANT   = 3,
    parameter int DOT_W  = 12,   // signed width of dot_i
    parameter int ESUM_W = 10    // signed width of esum_i
) (
    input  logic signed [DOT_W-1:0]  dot_i,
    input  logic signed [ESUM_W-1:0] esum_i,
    input  logic                     nan_i,
    output logic [31:0]              value_o
);
  localparam logic [31:0] QNAN = 32'h7FC0_0000;
  localparam int          MAG_W = 32;          // |dot| zero-extended; shifts up to 31

  initial begin
    if (DOT_W < 2 || DOT_W > 25) $fatal(1, "bfp_to_fp32: DOT_W must be in 2..25");
    if (ESUM_W < 2 || ESUM_W > 12) $fatal(1, "bfp_to_fp32: ESUM_W must be in 2..12");
  end

  function automatic logic [31:0] convert(input logic signed [DOT_W-1:0] dot,
                                          input logic signed [ESUM_W-1:0] esum);
    logic             neg, guard, sticky;
    logic [MAG_W-1:0] mag, q, sticky_mask;
    int               p, k, ee, rsh, field_base;
    logic [31:0]      enc;
    neg = dot[DOT_W-1];
    mag = neg ? MAG_W'(-33'(dot)) : MAG_W'(dot);   // |dot| <= 2**(DOT_W-1)
    if (mag == '0) return 32'h0000_0000;
    p = 0;                                       // position of |dot|'s leading one
    for (int i = 0; i < DOT_W; i++) begin
      if (mag[i]) p = i;
    end
    k   = int'(esum) - 2 * (MANT - 1);         // value = |dot| * 2**k
    ee  = (p + k < -126) ? -126 : p + k;       // unbiased exponent, subnormals at -126
    rsh = ee - 23 - k;                         // |dot| * 2**-rsh = significand in ulps
    // a left shift is exact (rsh >= p - 23 >= -23); from a right shift of 27 on,
    // |dot| < 2**25 is below a quarter ulp and rounds to 0
    if (rsh <= 0) begin
      q = mag << (-rsh);
    end else begin
      if (rsh > 27) rsh = 27;
      q           = mag >> rsh;
      guard       = mag[rsh-1];
      sticky_mask = ~({MAG_W{1'b1}} << (rsh - 1));
      sticky      = (mag & sticky_mask) != '0;
      q           = q + MAG_W'({guard & (sticky | q[0])});   // nearest, ties to even
    end
    field_base = ee + 126;                     // 0 for a subnormal, field - 1 otherwise
    if (field_base >= 254) return {neg, 8'hFF, 23'd0};
    enc = (32'(field_base) << 23) + q;         // a rounding carry moves into the field
    if (enc >= 32'h7F80_0000) return {neg, 8'hFF, 23'd0};
    return {neg, enc[30:0]};
  endfunction

  assign value_o = nan_i ? QNAN : convert(dot_i, esum_i);
endmodule
