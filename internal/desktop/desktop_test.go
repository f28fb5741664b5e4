package desktop

import (
	"bytes"
	"image"
	"image/color"
	"image/png"
	"testing"

	"github.com/stretchr/testify/require"
)

// Two pixels, #ff8000 and #0040ff, in the layouts an X server may use.
func TestDecode(t *testing.T) {
	t.Parallel()
	want := []color.RGBA{{0xff, 0x80, 0x00, 0xff}, {0x00, 0x40, 0xff, 0xff}}
	tests := []struct {
		name string
		f    pixelFormat
		data []byte
	}{
		{"32 bpp LSBFirst (B,G,R,X: Xvfb on x86)", pixelFormat{BPP: 32, Pad: 32, Red: 0xff0000, Green: 0xff00, Blue: 0xff},
			[]byte{0x00, 0x80, 0xff, 0x00, 0xff, 0x40, 0x00, 0x00}},
		{"32 bpp MSBFirst", pixelFormat{BPP: 32, Pad: 32, MSBFirst: true, Red: 0xff0000, Green: 0xff00, Blue: 0xff},
			[]byte{0x00, 0xff, 0x80, 0x00, 0x00, 0x00, 0x40, 0xff}},
		{"32 bpp, X byte set (not alpha)", pixelFormat{BPP: 32, Pad: 32, Red: 0xff0000, Green: 0xff00, Blue: 0xff},
			[]byte{0x00, 0x80, 0xff, 0x7f, 0xff, 0x40, 0x00, 0x01}},
		{"24 bpp packed, rows padded to 32 bits", pixelFormat{BPP: 24, Pad: 32, Red: 0xff0000, Green: 0xff00, Blue: 0xff},
			[]byte{0x00, 0x80, 0xff, 0xff, 0x40, 0x00, 0xee, 0xee}},
		{"16 bpp 565 LSBFirst", pixelFormat{BPP: 16, Pad: 32, Red: 0xf800, Green: 0x07e0, Blue: 0x001f},
			// 0xfc00 = r 31, g 32, b 0; 0x021f = r 0, g 16, b 31
			[]byte{0x00, 0xfc, 0x1f, 0x02}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img, err := decode(tt.data, 2, 1, tt.f)
			require.NoError(t, err)
			require.Equal(t, image.Rect(0, 0, 2, 1), img.Bounds())
			for x, c := range want {
				got := img.RGBAAt(x, 0)
				if tt.f.BPP == 16 { // 5 and 6 bits per channel: close, not exact
					require.InDelta(t, c.R, got.R, 5, "pixel %d: %v", x, got)
					require.InDelta(t, c.G, got.G, 5, "pixel %d: %v", x, got)
					require.InDelta(t, c.B, got.B, 5, "pixel %d: %v", x, got)
					require.Equal(t, uint8(0xff), got.A)
					continue
				}
				require.Equal(t, c, got, "pixel %d", x)
			}
		})
	}
}

func TestDecodeRefuses(t *testing.T) {
	t.Parallel()
	rgb := pixelFormat{BPP: 32, Pad: 32, Red: 0xff0000, Green: 0xff00, Blue: 0xff}
	_, err := decode(make([]byte, 7), 2, 1, rgb)
	require.ErrorContains(t, err, "want 8")
	_, err = decode(make([]byte, 8), 2, 1, pixelFormat{BPP: 8, Pad: 32})
	require.Error(t, err)
	_, err = decode(make([]byte, 8), 2, 1, pixelFormat{BPP: 32, Pad: 32})
	require.ErrorContains(t, err, "TrueColor")
}

func TestXauthorityIsOneWildEntry(t *testing.T) {
	t.Parallel()
	cookie := bytes.Repeat([]byte{0xab}, 16)
	b := xauthority(cookie)
	want := append([]byte{0xff, 0xff, 0, 0, 0, 0, 0, 18}, "MIT-MAGIC-COOKIE-1"...)
	want = append(append(want, 0, 16), cookie...)
	require.Equal(t, want, b)
}

func TestSetupRequest(t *testing.T) {
	t.Parallel()
	cookie := bytes.Repeat([]byte{1}, 16)
	b := setupRequest(cookie)
	require.Len(t, b, 12+20+16)
	require.Equal(t, []byte{'l', 0, 11, 0, 0, 0, 18, 0, 16, 0, 0, 0}, b[:12])
	require.Equal(t, "MIT-MAGIC-COOKIE-1\x00\x00", string(b[12:32]))
	require.Equal(t, cookie, b[32:])
}

func TestEncodePNG(t *testing.T) {
	t.Parallel()
	img := image.NewRGBA(image.Rect(0, 0, 3, 2))
	img.SetRGBA(2, 1, color.RGBA{1, 2, 3, 255})
	b, err := encodePNG(img)
	require.NoError(t, err)
	back, err := png.Decode(bytes.NewReader(b))
	require.NoError(t, err)
	require.Equal(t, img.Bounds(), back.Bounds())
	r, g, bl, _ := back.At(2, 1).RGBA()
	require.Equal(t, []uint32{1, 2, 3}, []uint32{r >> 8, g >> 8, bl >> 8})
}

func TestOptionsDefaults(t *testing.T) {
	t.Parallel()
	o := Options{Dir: "/x"}
	require.NoError(t, o.defaults())
	require.Equal(t, []int{1280, 800, 24}, []int{o.Width, o.Height, o.Depth})
	require.Error(t, (&Options{}).defaults(), "no directory")
	require.Error(t, (&Options{Dir: "/x", Depth: 8}).defaults())
	require.Error(t, (&Options{Dir: "/x", Width: 100000}).defaults())
}
