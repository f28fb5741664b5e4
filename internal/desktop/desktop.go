// Package desktop gives a desktop-flow run an unattended virtual screen of
// its own: an Xvfb server started as the run's user, reachable only with a
// fresh Xauthority cookie, torn down with the run. The agent takes
// screenshots of it (on failure, or when asked) straight from the X server.
package desktop

import (
	"bytes"
	"errors"
	"fmt"
	"image"
	"image/png"
	"log/slog"
	"math/bits"
	"strconv"
	"time"
)

// Options describe the display of one run.
type Options struct {
	// UID and GID are the run's user; Xvfb runs as them.
	UID, GID uint32
	// Dir is the run's directory, owned by the user, whose parent the user
	// cannot write (runas.CreateRunDir makes one). The Xauthority file is
	// created in it.
	Dir string
	// Width, Height and Depth of the screen; 0 means 1280, 800 and 24.
	// Depth is 16 or 24.
	Width, Height, Depth int
	// Xvfb is the server binary; empty means /usr/bin/Xvfb.
	Xvfb string
	// StartTimeout bounds the wait for the server to be ready; 0 means 10 s.
	StartTimeout time.Duration
	// Logger receives cleanup problems; nil discards them.
	Logger *slog.Logger
}

// Defaults for Options.
const (
	DefaultWidth  = 1280
	DefaultHeight = 800
	DefaultDepth  = 24
	DefaultXvfb   = "/usr/bin/Xvfb"
)

// AuthFileName is the Xauthority file Start creates in Options.Dir.
const AuthFileName = "Xauthority"

// ErrUnsupported: this operating system has no virtual desktop yet.
var ErrUnsupported = errors.New("desktop: not supported on this operating system")

func (o *Options) defaults() error {
	if o.Width == 0 {
		o.Width = DefaultWidth
	}
	if o.Height == 0 {
		o.Height = DefaultHeight
	}
	if o.Depth == 0 {
		o.Depth = DefaultDepth
	}
	if o.Xvfb == "" {
		o.Xvfb = DefaultXvfb
	}
	if o.StartTimeout == 0 {
		o.StartTimeout = 10 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case o.Dir == "":
		return errors.New("desktop: no run directory for the Xauthority file")
	case o.Width < 16 || o.Height < 16 || o.Width > 8192 || o.Height > 8192:
		return fmt.Errorf("desktop: screen size %dx%d out of range", o.Width, o.Height)
	case o.Depth != 16 && o.Depth != 24:
		return fmt.Errorf("desktop: depth %d not supported (16 or 24)", o.Depth)
	}
	return nil
}

// Env is what a program needs to reach display number n with the cookie
// in authFile.
func env(n int, authFile string) []string {
	return []string{"DISPLAY=:" + strconv.Itoa(n), "XAUTHORITY=" + authFile}
}

// xauthority is an Xauthority file with one FamilyWild entry (any host,
// any display number) for the MIT-MAGIC-COOKIE-1 cookie. A FamilyLocal
// entry would be keyed by the hostname and fail in a UTS namespace with
// another one; the display number is unknown before Xvfb picks it.
func xauthority(cookie []byte) []byte {
	var b bytes.Buffer
	field := func(s []byte) {
		b.Write([]byte{byte(len(s) >> 8), byte(len(s))})
		b.Write(s)
	}
	b.Write([]byte{0xff, 0xff}) // FamilyWild
	field(nil)                  // address
	field(nil)                  // display number
	field([]byte(cookieName))
	field(cookie)
	return b.Bytes()
}

const cookieName = "MIT-MAGIC-COOKIE-1"

// setupRequest is the client's X connection setup, little-endian,
// authenticated with cookie.
func setupRequest(cookie []byte) []byte {
	pad := func(n int) int { return (n + 3) &^ 3 }
	b := make([]byte, 12+pad(len(cookieName))+pad(len(cookie)))
	b[0] = 'l' // LSBFirst
	b[2] = 11  // protocol 11.0
	b[6] = byte(len(cookieName))
	b[8] = byte(len(cookie))
	copy(b[12:], cookieName)
	copy(b[12+pad(len(cookieName)):], cookie)
	return b
}

// pixelFormat is how a ZPixmap image lays out its pixels, from the
// server's setup: bits per pixel and scanline pad of the depth's pixmap
// format, the image byte order, and the visual's colour masks.
type pixelFormat struct {
	BPP, Pad         int
	MSBFirst         bool
	Red, Green, Blue uint32
}

// decode turns ZPixmap data into an opaque RGBA image. The X pixel has no
// alpha (the fourth byte of a 32-bit pixel is padding), so alpha is 255.
func decode(data []byte, w, h int, f pixelFormat) (*image.RGBA, error) {
	if f.BPP != 16 && f.BPP != 24 && f.BPP != 32 || f.Pad%8 != 0 || f.Pad == 0 {
		return nil, fmt.Errorf("desktop: unsupported pixel format %d bpp, pad %d", f.BPP, f.Pad)
	}
	if f.Red == 0 || f.Green == 0 || f.Blue == 0 {
		return nil, errors.New("desktop: visual is not TrueColor")
	}
	stride := (w*f.BPP + f.Pad - 1) / f.Pad * f.Pad / 8
	if len(data) < stride*h {
		return nil, fmt.Errorf("desktop: image data is %d bytes, want %d", len(data), stride*h)
	}
	bpp := f.BPP / 8
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		row := data[y*stride:]
		for x := 0; x < w; x++ {
			px := row[x*bpp : x*bpp+bpp]
			var v uint32
			for i := range bpp {
				if f.MSBFirst {
					v = v<<8 | uint32(px[i])
				} else {
					v |= uint32(px[i]) << (8 * i)
				}
			}
			o := img.PixOffset(x, y)
			img.Pix[o] = channel(v, f.Red)
			img.Pix[o+1] = channel(v, f.Green)
			img.Pix[o+2] = channel(v, f.Blue)
			img.Pix[o+3] = 0xff
		}
	}
	return img, nil
}

// channel extracts the bits of mask from v and scales them to 0..255.
func channel(v, mask uint32) uint8 {
	shift, n := bits.TrailingZeros32(mask), bits.OnesCount32(mask)
	c := (v & mask) >> shift
	maxC := uint32(1)<<n - 1
	return uint8((c*255 + maxC/2) / maxC)
}

// encodePNG encodes img with the fastest compression: screenshots are
// taken when something failed, and speed matters more than size.
func encodePNG(img image.Image) ([]byte, error) {
	var buf bytes.Buffer
	enc := png.Encoder{CompressionLevel: png.BestSpeed}
	if err := enc.Encode(&buf, img); err != nil {
		return nil, fmt.Errorf("desktop: encode png: %w", err)
	}
	return buf.Bytes(), nil
}
